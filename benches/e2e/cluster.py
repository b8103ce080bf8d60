#!/usr/bin/env python3
"""Scale-out benchmark: TPC-H q1 q3 q5 q9 q18 on a Ballista cluster of two executors vs the
single node, and the cluster path's overhead on a small query.

One Strata server (the release binary) in front of `strata cluster scheduler` and two
`strata cluster executor` processes (one core each), on a local warehouse. Every query runs
both ways on the same server, chosen per request by `x-strata-distributed: on|off` (ADBC
call header), the order alternating each round; results are checked equal on the first
round. While a query runs on the cluster, the executors' peak RSS and the peak size of
their shuffle directories are sampled; bytes per lineitem row come from those.

On a 2-core machine the two executors share the cores the single node uses: the numbers
are the cluster path's cost, not its speed-up.

With --tls the cluster runs under Strata's mutual TLS (`cluster.transport = "tls"`,
certificates made with the openssl CLI); its numbers go to cluster-tls.json.

Usage (from the repository root):
    cargo build --release
    .bench-venv/bin/python benches/e2e/cluster.py --strata target/release/strata --sf 10 --out bench-out [--tls]
"""

import argparse
import atexit
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from queries import CLUSTER_QUERIES, TABLES  # noqa: E402

KEY = "bench-plan-key-0123456789abcdef0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SPAWNED = []


def spawn(binary, args, env, log):
    full = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn"}
    full.update(env)
    p = subprocess.Popen([binary, *args], env=full, stdout=log, stderr=subprocess.STDOUT)
    SPAWNED.append(p)
    return p


@atexit.register
def stop_nodes():
    for p in SPAWNED:
        p.kill()


def issue_certs(d):
    """A certificate authority and one node certificate (naming `strata-cluster` and
    127.0.0.1) for every node; the nodes' environment for them."""
    d.mkdir(parents=True, exist_ok=True)

    def openssl(*a):
        subprocess.run(["openssl", *map(str, a)], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem",
            "-days", "2", "-subj", "/CN=bench authority")
    openssl("req", *ec, "-keyout", d / "node.key", "-out", d / "node.csr", "-subj", "/CN=strata-cluster")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:strata-cluster,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", d / "node.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
            "-CAcreateserial", "-out", d / "node.pem", "-days", "2", "-extfile", d / "ext.cnf")
    return {
        "STRATA__CLUSTER__TRANSPORT": "tls",
        "STRATA__CLUSTER__TLS__CA_FILE": str(d / "ca.pem"),
        "STRATA__CLUSTER__TLS__CERT_FILE": str(d / "node.pem"),
        "STRATA__CLUSTER__TLS__KEY_FILE": str(d / "node.key"),
        "STRATA__CLUSTER__TLS__SERVER_NAME": "strata-cluster",
    }


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


class Sampler:
    """Peak RSS of `procs` and peak growth of `dirs` while running."""

    def __init__(self, procs, dirs):
        self.procs, self.dirs = procs, dirs
        self.rss = self.disk = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        base = sum(du(d) for d in self.dirs)
        while not self.stop.is_set():
            self.rss = max(self.rss, max(p.memory_info().rss for p in self.procs))
            self.disk = max(self.disk, sum(du(d) for d in self.dirs) - base)
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", required=True)
    ap.add_argument("--sf", type=float, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default="/tmp/strata-cluster-bench")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--tls", action="store_true",
                    help="the cluster under Strata's mutual TLS (certificates by the openssl CLI)")
    args = ap.parse_args()
    args.strata = str(pathlib.Path(args.strata).resolve())
    work = pathlib.Path(args.work)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "data", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    warehouse = work / "data" / "warehouse"
    logs = open(work / "nodes.log", "w")

    port = free_port()
    tls = issue_certs(work / "data" / "pki") if args.tls else {}
    url = f"{'https' if args.tls else 'http'}://127.0.0.1:{port}"
    scheduler = spawn(args.strata, ["cluster", "scheduler"],
                      {"STRATA__CLUSTER__SCHEDULER_BIND": f"127.0.0.1:{port}", **tls}, logs)
    time.sleep(1)
    executors, dirs = [], []
    for i in range(2):
        d = work / "data" / f"executor{i}"
        dirs.append(d)
        executors.append(spawn(args.strata, ["cluster", "executor"], {
            "STRATA__STORAGE__WAREHOUSE": str(warehouse),
            "STRATA__SERVER__DATA_DIR": str(d),
            "STRATA__CLUSTER__SCHEDULER_URL": url,
            "STRATA__CLUSTER__PLAN_KEY": KEY,
            "STRATA__CLUSTER__EXECUTOR_FLIGHT_PORT": str(free_port()),
            "STRATA__CLUSTER__EXECUTOR_GRPC_PORT": str(free_port()),
            "STRATA__CLUSTER__EXECUTOR_VCORES": "1",
            **tls,
        }, logs))
    server = subprocess.Popen([args.strata, "serve"], env={
        "PATH": os.environ.get("PATH", ""),
        "STRATA__SERVER__HTTP_ADDR": "127.0.0.1:0",
        "STRATA__SERVER__FLIGHT_ADDR": "127.0.0.1:0",
        "STRATA__SERVER__DATA_DIR": str(work / "data"),
        "STRATA__SERVER__MAX_REQUEST_BYTES": str(4 << 30),
        "STRATA__STORAGE__WAREHOUSE": str(warehouse),
        "STRATA__QUERY__TARGET_PARTITIONS": "2",
        "STRATA__QUERY__TIMEOUT_SECS": "0",
        # SF 10's joins hold gigabytes (DataFusion's hash join does not spill).
        "STRATA__QUERY__MEMORY_LIMIT_BYTES": str(12 << 30),
        "STRATA__SERVER__MEMORY_BUDGET_BYTES": str(14 << 30),
        "STRATA__CACHE__ENABLED": "false",
        "STRATA__LOG__LEVEL": "warn",
        # The header decides: nothing is large enough for `auto` on its own.
        "STRATA__CLUSTER__MODE": "auto",
        "STRATA__CLUSTER__MIN_BYTES_SCANNED": str(1 << 60),
        "STRATA__CLUSTER__SCHEDULER_URL": url,
        "STRATA__CLUSTER__PLAN_KEY": KEY,
        **tls,
    }, cwd=work, stdout=subprocess.PIPE, text=True)
    SPAWNED.append(server)
    flight = token = None
    while token is None:
        raw = server.stdout.readline()
        if not raw:
            raise RuntimeError("strata did not start")
        line = raw.strip()
        if line.startswith("Flight SQL"):
            flight = line.split()[2]
        elif line.startswith("eyJ"):
            token = line
    threading.Thread(target=server.stdout.read, daemon=True).start()

    def connect(distributed):
        return flight_sql.connect(flight, db_kwargs={
            adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}",
            "adbc.flight.sql.rpc.call_header.x-strata-distributed": distributed,
        })

    data = work / f"tpch-sf{args.sf:g}"
    if not data.exists():
        tpchgen = pathlib.Path(sys.executable).parent / "tpchgen-cli"
        subprocess.run([str(tpchgen), "parquet", "-s", str(args.sf), "--output-dir", str(data)], check=True)
    started = time.time()
    with connect("off") as conn, conn.cursor() as cur:
        for table in TABLES:
            f = pq.ParquetFile(data / f"{table}.parquet")
            reader = pa.RecordBatchReader.from_batches(f.schema_arrow, f.iter_batches(65536))
            cur.adbc_ingest(table, reader, mode="create", db_schema_name="gold")
        conn.commit()
    load_s = time.time() - started
    lineitem_rows = pq.ParquetFile(data / "lineitem.parquet").metadata.num_rows

    procs = [psutil.Process(e.pid) for e in executors]
    conns = {"on": connect("on"), "off": connect("off")}
    samples = {q: {"on": [], "off": []} for q in CLUSTER_QUERIES}
    peaks = {q: {"rss": 0, "shuffle": 0} for q in CLUSTER_QUERIES}
    equal = {}
    errors = {}

    def timed(cur, sql):
        t = time.perf_counter()
        cur.execute(sql)
        table = cur.fetch_arrow_table()
        return table, time.perf_counter() - t

    for r in range(args.runs):
        for q, sql in CLUSTER_QUERIES.items():
            order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
            results = {}
            for way in order:
                # A query that fails one way is reported, not the end of the run.
                try:
                    with conns[way].cursor() as cur:
                        if way == "on":
                            with Sampler(procs, dirs) as s:
                                results[way], secs = timed(cur, sql)
                            peaks[q]["rss"] = max(peaks[q]["rss"], s.rss)
                            peaks[q]["shuffle"] = max(peaks[q]["shuffle"], s.disk)
                        else:
                            results[way], secs = timed(cur, sql)
                    samples[q][way].append(secs)
                except Exception as e:  # noqa: BLE001
                    errors.setdefault(q, {})[way] = str(e).splitlines()[0][:300]
                    conns[way] = connect(way)
            if r == 0 and len(results) == 2:
                equal[q] = results["on"].num_rows == results["off"].num_rows
    small = "select count(*) as n from nation"
    overhead = {"on": [], "off": []}
    for i in range(40):
        for way in (["on", "off"] if i % 2 == 0 else ["off", "on"]):
            with conns[way].cursor() as cur:
                t = time.perf_counter()
                cur.execute(small)
                cur.fetch_arrow_table()
                overhead[way].append(time.perf_counter() - t)

    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    ratio = lambda a, b: a / b if a and b else None  # noqa: E731
    result = {
        "sf": args.sf,
        "transport": "tls" if args.tls else "loopback",
        "lineitem_rows": lineitem_rows,
        "load_s": load_s,
        "samples_s": samples,
        "median_s": {q: {w: med(s) for w, s in per.items()} for q, per in samples.items()},
        "cluster_vs_single": {q: ratio(med(per["on"]), med(per["off"])) for q, per in samples.items()},
        "row_counts_equal": equal,
        "errors": errors,
        "executor_peak_rss_bytes": {q: p["rss"] for q, p in peaks.items()},
        "peak_shuffle_bytes": {q: p["shuffle"] for q, p in peaks.items()},
        "shuffle_bytes_per_lineitem_row": {q: p["shuffle"] / lineitem_rows for q, p in peaks.items()},
        "small_query_ms": {w: med(s) * 1000 for w, s in overhead.items()},
    }
    (out / ("cluster-tls.json" if args.tls else "cluster.json")).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "samples_s"}, indent=2))
    for c in conns.values():
        c.close()


if __name__ == "__main__":
    main()
