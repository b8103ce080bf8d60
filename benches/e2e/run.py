#!/usr/bin/env python3
"""End-to-end benchmark: Strata side by side with what users would pick instead.

One run, same data, same cores, engine order rotated every iteration:

  * TPC-H q1 q3 q5 q6 q10 through Strata over Flight SQL (ADBC) and REST (Arrow IPC stream),
    vs the Python `datafusion` package in process over the same Delta data files, vs DuckDB in
    process over the generated Parquet files: medians, ratios, geomean;
  * `SELECT * FROM lineitem` streamed over Flight SQL vs a raw `pyarrow.flight` DoGet of the
    same table from an in-memory server (GB/s), and the largest Flight message;
  * wire bytes (REST Arrow stream) per result vs the result's Arrow size;
  * result-cache hit latency p50/p99 vs a raw Flight round trip;
  * MERGE upsert and SCD Type 2 vs the Python `deltalake` package, `--runs` rounds on fresh
    copies of one target, sides alternating who goes first (results checked equal; wall
    time and peak RSS growth of the process doing the work);
  * 1/2/4/8 concurrent ADBC clients running q6: throughput and p99;
  * server peak RSS while the lineitem scan streams, and while an SF-10 lineitem streams.

Every engine gets 2 threads / target partitions. Raw samples, load averages and settings go to
`<out>/results.json`, a Markdown summary to `<out>/summary.md`.

Usage (from the repository root; the release build is what you compare):
    cargo build --release
    python3 -m venv .bench-venv && .bench-venv/bin/pip install -r benches/e2e/requirements.txt
    .bench-venv/bin/python benches/e2e/run.py --strata target/release/strata --sf 1 --out bench-out
"""

import argparse
import json
import math
import os
import pathlib
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import datafusion
import deltalake
import duckdb
import psutil
import pyarrow as pa
import pyarrow.flight as paflight
import pyarrow.parquet as pq

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from queries import QUERIES, TABLES  # noqa: E402

THREADS = 2


# ---------------------------------------------------------------- Strata process


class Strata:
    """The real server binary on free ports, dev auth, a warehouse under `work`."""

    def __init__(self, binary, work, cache):
        self.binary = binary
        self.work = pathlib.Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("STRATA_CONFIG", None)
        env.update({
            "STRATA__SERVER__HTTP_ADDR": "127.0.0.1:0",
            "STRATA__SERVER__FLIGHT_ADDR": "127.0.0.1:0",
            "STRATA__SERVER__DATA_DIR": str(self.work / "data"),
            "STRATA__SERVER__MAX_REQUEST_BYTES": str(4 << 30),
            "STRATA__STORAGE__WAREHOUSE": str(self.work / "data" / "warehouse"),
            "STRATA__QUERY__TARGET_PARTITIONS": str(THREADS),
            "STRATA__QUERY__TIMEOUT_SECS": "0",
            # The SF-10 scan streams ~10 GB, over the 4 GiB default result cap.
            "STRATA__QUERY__MAX_RESULT_BYTES": str(1 << 40),
            "STRATA__CACHE__ENABLED": "true" if cache else "false",
            "STRATA__LOG__LEVEL": "warn",
        })
        self.proc = subprocess.Popen(
            [binary, "serve"], env=env, cwd=self.work, stdout=subprocess.PIPE, text=True
        )
        self.http = self.flight = self.token = None
        deadline = time.time() + 120
        while self.token is None:
            line = self.proc.stdout.readline()
            if not line or time.time() > deadline:
                raise RuntimeError("strata did not start")
            line = line.strip()
            if line.startswith("REST"):
                self.http = line.split()[1]
            elif line.startswith("Flight SQL"):
                self.flight = line.split()[2]
            elif line.startswith("eyJ"):
                self.token = line
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.ps = psutil.Process(self.proc.pid)

    def connect(self):
        return flight_sql.connect(
            self.flight,
            db_kwargs={
                adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {self.token}"
            },
        )

    def rest(self, sql, accept="application/vnd.apache.arrow.stream"):
        """Runs `sql` over REST; returns (wire bytes, Arrow table)."""
        req = urllib.request.Request(
            f"{self.http}/api/v1/query",
            data=json.dumps({"sql": sql}).encode(),
            headers={
                "authorization": f"Bearer {self.token}",
                "content-type": "application/json",
                "accept": accept,
            },
        )
        with urllib.request.urlopen(req, timeout=3600) as r:
            body = r.read()
        return len(body), pa.ipc.open_stream(body).read_all()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


# ---------------------------------------------------------------- helpers


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def median(xs):
    return statistics.median(xs)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(math.ceil(p / 100 * len(xs))) - 1)]


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def same(a, b):
    """Results equal up to float rounding and column names."""
    if a.num_rows != b.num_rows or a.num_columns != b.num_columns:
        return False
    for ca, cb in zip(a.columns, b.columns):
        for x, y in zip(ca.to_pylist(), cb.to_pylist()):
            if isinstance(x, float) or isinstance(y, float) or hasattr(x, "as_tuple"):
                if x is None or y is None:
                    if x is not y:
                        return False
                elif abs(float(x) - float(y)) > 1e-6 * max(1.0, abs(float(x))):
                    return False
            elif x != y:
                return False
    return True


class PeakRss:
    """Samples a process's RSS every 20 ms while in the `with` block; `.peak` and `.growth`
    (peak minus the RSS on entry) in bytes."""

    def __init__(self, process):
        self.process = process
        self.peak = self.start = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.peak = self.process.memory_info().rss

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.process.memory_info().rss)
                time.sleep(0.02)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self):
        return self.peak - self.start


def raw_flight_server(tables):
    """The baseline: pyarrow's own Flight server streaming the tables from memory, in a child
    process (so it does not share the client's GIL); returns (process, location)."""
    script = (
        "import sys, pyarrow as pa, pyarrow.flight as f, pyarrow.parquet as pq\n"
        "class S(f.FlightServerBase):\n"
        "    def __init__(s, t):\n"
        "        super().__init__('grpc://127.0.0.1:0'); s.t = t\n"
        "    def do_get(s, c, k):\n"
        "        return f.RecordBatchStream(s.t[k.ticket.decode()])\n"
        "t = {n: pq.read_table(p) for n, p in (a.split('=', 1) for a in sys.argv[1:])}\n"
        "s = S(t); print(s.port, flush=True); s.serve()\n"
    )
    args = [f"{k}={v}" for k, v in tables.items()]
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f"grpc://127.0.0.1:{port}"


# ---------------------------------------------------------------- phases


def generate(sf, data):
    if not (data / "lineitem.parquet").exists():
        subprocess.run(
            ["tpchgen-cli", "parquet", "-s", str(sf), "--output-dir", str(data)], check=True
        )
    return {t: data / f"{t}.parquet" for t in TABLES}


def load(strata, files):
    """ADBC bulk ingest of every table into gold, in 64k-row batches."""
    with strata.connect() as conn, conn.cursor() as cur:
        for table, path in files.items():
            f = pq.ParquetFile(path)
            reader = pa.RecordBatchReader.from_batches(f.schema_arrow, f.iter_batches(65536))
            cur.adbc_ingest(table, reader, mode="create", db_schema_name="gold")
        conn.commit()


def engines(strata, files, warehouse):
    """name → callable(sql) → Arrow table."""
    df = datafusion.SessionContext(
        datafusion.SessionConfig().with_target_partitions(THREADS)
    )
    for t in TABLES:
        # Exactly the Parquet files of the current snapshot of Strata's Delta table,
        # hard-linked into a directory of their own for DataFusion's listing table.
        linked = warehouse.parent / "datafusion" / t
        shutil.rmtree(linked, ignore_errors=True)
        linked.mkdir(parents=True)
        for uri in deltalake.DeltaTable(str(warehouse / "gold" / t)).file_uris():
            src = pathlib.Path(uri.removeprefix("file://"))
            os.link(src, linked / src.name)
        df.register_listing_table(t, str(linked), file_extension=".parquet")
    duck = duckdb.connect()
    duck.execute(f"SET threads = {THREADS}")
    for t, p in files.items():
        duck.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{p}')")
    conn = strata.connect()
    cur = conn.cursor()

    def flight(sql):
        cur.execute(sql)
        return cur.fetch_arrow_table()

    return {
        "strata_flight": flight,
        "strata_rest": lambda sql: strata.rest(sql)[1],
        "datafusion": lambda sql: df.sql(sql).to_arrow_table(),
        "duckdb": lambda sql: duck.sql(sql).to_arrow_table(),
    }, conn


def tpch(strata, files, warehouse, runs):
    run, conn = engines(strata, files, warehouse)
    names = list(run)
    samples = {q: {e: [] for e in names} for q in QUERIES}
    checked = {}
    for i in range(runs):
        order = names[i % len(names):] + names[: i % len(names)]
        for q, sql in QUERIES.items():
            results = {}
            for e in order:
                secs, table = timed(lambda: run[e](sql))
                samples[q][e].append(secs)
                results[e] = table
            if i == 0:
                ref = results["datafusion"]
                checked[q] = {e: same(ref, t) for e, t in results.items()}
    conn.close()
    medians = {q: {e: median(s) for e, s in per.items()} for q, per in samples.items()}
    ratios = {
        e: {q: medians[q][e] / medians[q]["datafusion"] for q in QUERIES}
        for e in names
    }
    return {
        "samples_s": samples,
        "median_s": medians,
        "ratio_vs_datafusion": ratios,
        "geomean_vs_datafusion": {e: geomean(list(r.values())) for e, r in ratios.items()},
        "results_equal_datafusion": checked,
    }


def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def flight_sql_command(sql):
    """A Flight SQL `CommandStatementQuery` wrapped in `google.protobuf.Any`, as every
    Flight SQL client sends it (hand-encoded: two length-delimited fields)."""
    query = sql.encode()
    inner = b"\x0a" + _varint(len(query)) + query
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return b"\x0a" + _varint(len(url)) + url + b"\x12" + _varint(len(inner)) + inner


def strata_do_get(strata, sql, client=None):
    """Runs `sql` on Strata with pyarrow's own Flight client (GetFlightInfo + DoGet):
    the same client as the raw baseline; on `client`'s connection if given, else on a new
    one. Returns (Arrow bytes, rows, largest message body)."""
    own = client is None
    client = client or paflight.FlightClient(strata.flight)
    options = paflight.FlightCallOptions(headers=[(b"authorization", f"Bearer {strata.token}".encode())])
    info = client.get_flight_info(paflight.FlightDescriptor.for_command(flight_sql_command(sql)), options)
    n = rows = largest = 0
    for endpoint in info.endpoints:
        for chunk in client.do_get(endpoint.ticket, options):
            size = chunk.data.get_total_buffer_size()
            n, rows, largest = n + chunk.data.nbytes, rows + chunk.data.num_rows, max(largest, size)
    if own:
        client.close()
    return n, rows, largest


def streaming(strata, files, runs):
    """`SELECT * FROM lineitem` from Strata over Flight SQL, with pyarrow's Flight client (the
    same client as the baseline) and with the ADBC driver, vs a raw pyarrow.flight DoGet of
    the same table from memory; server RSS sampled meanwhile; the largest message body."""
    lineitem = pq.read_table(files["lineitem"])
    logical = lineitem.nbytes
    del lineitem
    raw, location = raw_flight_server({"lineitem": files["lineitem"]})
    samples = {"strata_pyarrow": [], "strata_adbc": [], "raw": []}
    largest = peak = 0
    try:
        client = paflight.FlightClient(location)

        def via_adbc():
            with strata.connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT * FROM lineitem")
                return sum(batch.nbytes for batch in cur.fetch_record_batch())

        def via_pyarrow():
            nonlocal largest
            n, _, biggest = strata_do_get(strata, "SELECT * FROM lineitem")
            largest = max(largest, biggest)
            return n

        def via_raw():
            return sum(c.data.nbytes for c in client.do_get(paflight.Ticket(b"lineitem")))

        paths = [("strata_pyarrow", via_pyarrow), ("strata_adbc", via_adbc), ("raw", via_raw)]
        for i in range(runs):
            for name, f in paths[i % 3:] + paths[: i % 3]:
                if name == "raw":
                    secs, _ = timed(f)
                else:
                    with PeakRss(strata.ps) as rss:
                        secs, _ = timed(f)
                    peak = max(peak, rss.peak)
                samples[name].append(secs)
    finally:
        raw.terminate()
    gb_s = {name: logical / median(xs) / 1e9 for name, xs in samples.items()}
    return {
        "logical_bytes": logical,
        "samples_s": samples,
        "strata_gb_s": gb_s["strata_pyarrow"],
        "strata_adbc_gb_s": gb_s["strata_adbc"],
        "raw_flight_gb_s": gb_s["raw"],
        "ratio_vs_raw": gb_s["strata_pyarrow"] / gb_s["raw"],
        "adbc_ratio_vs_raw": gb_s["strata_adbc"] / gb_s["raw"],
        "largest_message_body_bytes": largest,
        "server_peak_rss_bytes": peak,
    }


def big_scan(strata, work, sf, parts=20):
    """Server peak RSS while one client streams `SELECT *` of an SF-`sf` lineitem (loaded
    through ADBC ingest, one part per commit, so no single upload is the whole table)."""
    data = pathlib.Path(work) / f"tpch-sf{sf:g}"
    if not (data / "lineitem").exists():
        subprocess.run(
            ["tpchgen-cli", "parquet", "-s", str(sf), "--tables=lineitem", f"--parts={parts}",
             "--output-dir", str(data)],
            check=True,
        )
    files = sorted((data / "lineitem").glob("*.parquet"))
    table = f"lineitem_sf{sf:g}".replace(".", "_")

    def load_parts():
        with strata.connect() as conn, conn.cursor() as cur:
            for path in files:
                f = pq.ParquetFile(path)
                reader = pa.RecordBatchReader.from_batches(f.schema_arrow, f.iter_batches(65536))
                cur.adbc_ingest(table, reader, mode="create_append", db_schema_name="gold")
            conn.commit()

    load_s, _ = timed(load_parts)

    def scan():
        logical, rows, _ = strata_do_get(strata, f"SELECT * FROM {table}")
        return rows, logical

    with PeakRss(strata.ps) as rss:
        secs, (rows, logical) = timed(scan)
    # The same scan on a second, freshly started replica of the same warehouse: what the
    # scan itself needs, without the memory the first process kept from earlier phases.
    fresh = Strata(strata.binary, strata.work, cache=False)
    try:
        with PeakRss(fresh.ps) as fresh_rss:
            fresh_s, _ = timed(lambda: strata_do_get(fresh, f"SELECT * FROM {table}"))
    finally:
        fresh.stop()
    return {
        "sf": sf,
        "rows": rows,
        "logical_bytes": logical,
        "load_s": load_s,
        "scan_s": secs,
        "scan_gb_s": logical / secs / 1e9,
        "server_rss_before_bytes": rss.start,
        "server_peak_rss_bytes": rss.peak,
        "fresh_server_scan_s": fresh_s,
        "fresh_server_rss_before_bytes": fresh_rss.start,
        "fresh_server_peak_rss_bytes": fresh_rss.peak,
    }


def wire_bytes(strata):
    out = {}
    for q, sql in QUERIES.items():
        wire, table = strata.rest(sql)
        out[q] = {"wire_bytes": wire, "arrow_bytes": table.nbytes, "rows": table.num_rows}
    wire, table = strata.rest("SELECT * FROM lineitem LIMIT 20")
    out["lineitem_20_rows"] = {"wire_bytes": wire, "arrow_bytes": table.nbytes, "rows": table.num_rows}
    return out


def cache_hits(strata_cached, files, n=200):
    """A cached 25-row result: Strata over Flight SQL (GetFlightInfo + DoGet, with pyarrow's
    Flight client and with ADBC) vs one raw pyarrow.flight DoGet of the same rows. Every
    client keeps its connection open between calls, as the raw baseline's does."""
    raw, location = raw_flight_server({"nation": files["nation"]})
    sql = "SELECT n_name, n_regionkey FROM nation ORDER BY n_nationkey"
    samples = {"hit_pyarrow": [], "hit_adbc": [], "raw": []}
    try:
        client = paflight.FlightClient(location)
        strata_client = paflight.FlightClient(strata_cached.flight)
        with strata_cached.connect() as conn, conn.cursor() as cur:
            cur.execute(sql)
            cur.fetch_arrow_table()  # fill the cache

            def hit_adbc():
                cur.execute(sql)
                return cur.fetch_arrow_table()

            paths = [
                ("hit_pyarrow", lambda: strata_do_get(strata_cached, sql, strata_client)),
                ("hit_adbc", hit_adbc),
                ("raw", lambda: client.do_get(paflight.Ticket(b"nation")).read_all()),
            ]
            for i in range(n):
                for name, f in paths[i % 3:] + paths[: i % 3]:
                    secs, _ = timed(f)
                    samples[name].append(secs)
    finally:
        raw.terminate()
    hit, adbc, rtt = samples["hit_pyarrow"], samples["hit_adbc"], samples["raw"]
    return {
        "samples_s": samples,
        "hit_p50_ms": pct(hit, 50) * 1e3,
        "hit_p99_ms": pct(hit, 99) * 1e3,
        "hit_adbc_p50_ms": pct(adbc, 50) * 1e3,
        "hit_adbc_p99_ms": pct(adbc, 99) * 1e3,
        "raw_p50_ms": pct(rtt, 50) * 1e3,
        "raw_p99_ms": pct(rtt, 99) * 1e3,
        "ratio_p50": pct(hit, 50) / pct(rtt, 50),
        "adbc_ratio_p50": pct(adbc, 50) / pct(rtt, 50),
    }


def concurrency(strata, duration=10.0):
    out = {}
    for clients in (1, 2, 4, 8):
        latencies = queue.Queue()
        stop = time.perf_counter() + duration

        def client():
            with strata.connect() as conn, conn.cursor() as cur:
                while time.perf_counter() < stop:
                    secs, _ = timed(lambda: (cur.execute(QUERIES["q6"]), cur.fetch_arrow_table()))
                    latencies.put(secs)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        xs = list(latencies.queue)
        out[str(clients)] = {
            "queries": len(xs),
            "qps": len(xs) / duration,
            "p50_ms": pct(xs, 50) * 1e3,
            "p99_ms": pct(xs, 99) * 1e3,
        }
    return out


def _rounds(strata, work, table, runs, strata_op, deltalake_op, summaries):
    """`runs` rounds of one write, each on fresh copies of `silver.<table>` (files and log):
    one registered in Strata's warehouse as `silver.<table>_r<i>` (Strata reads the store,
    so a copied table is a table), one for deltalake. The two sides alternate which goes
    first; each runs under its own peak-RSS sampler (the server for Strata, this process
    for deltalake). `strata_op(name)`, `deltalake_op(path)`; `summaries(name, path)` gives
    both results for the equality check. Median times; memory is the largest growth over
    the rounds, because a process that keeps freed memory (this one, with deltalake's
    allocator) shows next to no growth after its first round. Raw samples too."""
    warehouse = strata.work / "data" / "warehouse" / "silver"
    samples = {"strata_s": [], "deltalake_s": [], "strata_growth": [], "deltalake_growth": []}
    equal, last = [], None
    for i in range(runs):
        name = f"{table}_r{i}"
        copy = pathlib.Path(work) / f"deltalake-{table}-r{i}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(warehouse / table, warehouse / name)
        shutil.copytree(warehouse / table, copy)

        def strata_side():
            with PeakRss(strata.ps) as server:
                secs, _ = timed(lambda: strata_op(name))
            samples["strata_s"].append(secs)
            samples["strata_growth"].append(server.growth)

        def deltalake_side():
            with PeakRss(psutil.Process()) as me:
                secs, _ = timed(lambda: deltalake_op(copy))
            samples["deltalake_s"].append(secs)
            samples["deltalake_growth"].append(me.growth)

        for side in (strata_side, deltalake_side) if i % 2 == 0 else (deltalake_side, strata_side):
            side()
        mine, theirs = summaries(name, copy)
        equal.append(_close(mine, theirs))
        last = {"strata_summary": mine, "deltalake_summary": theirs}
        _json(strata, f"DROP TABLE silver.{name}")
        shutil.rmtree(copy, ignore_errors=True)
    m = {k: (max(v) if k.endswith("growth") else median(v)) for k, v in samples.items()}
    return {
        "runs": runs,
        "strata_s": m["strata_s"],
        "deltalake_s": m["deltalake_s"],
        "ratio": m["strata_s"] / m["deltalake_s"],
        "strata_server_peak_rss_growth_bytes": m["strata_growth"],
        "deltalake_process_peak_rss_growth_bytes": m["deltalake_growth"],
        "memory_ratio": m["strata_growth"] / max(m["deltalake_growth"], 1),
        "samples": samples,
        **last,
        "results_equal": all(equal),
    }


def _upsert_source(strata, name, target_rows, source_rows):
    """`bronze.<name>`: `source_rows` rows, half of them keys of the target (`v * 2` for
    v < target_rows) with new values, half new keys."""
    stride = max(2, (2 * target_rows // max(source_rows, 1)) & ~1)
    _json(strata, (
        f"CREATE TABLE bronze.{name} AS SELECT v * {stride} + v % 2 AS id, 'new-' || CAST(v AS STRING) AS name, "
        f"CAST(v AS DOUBLE) AS amount FROM (SELECT unnest(range(0, {source_rows})) AS v)"
    ))
    warehouse = strata.work / "data" / "warehouse"
    return deltalake.DeltaTable(str(warehouse / "bronze" / name)).to_pyarrow_table()


def merge(strata, work, target_rows, source_rows, runs):
    """Upsert `source_rows` (half updates, half inserts) into `target_rows`, through Strata's
    MERGE and through Python deltalake on copies of the same target, `runs` rounds."""
    _json(strata, (
        "CREATE TABLE silver.target AS SELECT v * 2 AS id, 'name-' || CAST(v AS STRING) AS name, "
        f"CAST(v % 1000 AS DOUBLE) AS amount FROM (SELECT unnest(range(0, {target_rows})) AS v)"
    ))
    source = _upsert_source(strata, "source", target_rows, source_rows)

    def via_strata(name):
        return _json(strata, (
            f"MERGE INTO silver.{name} t USING bronze.source s ON t.id = s.id "
            "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
        ))

    def via_deltalake(copy):
        return (
            deltalake.DeltaTable(str(copy))
            .merge(source, predicate="t.id = s.id", source_alias="s", target_alias="t")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )

    def summaries(name, copy):
        mine = _json(strata, f"SELECT count(*) AS n, sum(id) AS s, sum(amount) AS a FROM silver.{name}")[0]
        theirs = deltalake.DeltaTable(str(copy)).to_pyarrow_table()
        return mine, {
            "n": theirs.num_rows,
            "s": pa.compute.sum(theirs["id"]).as_py(),
            "a": pa.compute.sum(theirs["amount"]).as_py(),
        }

    out = _rounds(strata, work, "target", runs, via_strata, via_deltalake, summaries)
    return {"target_rows": target_rows, "source_rows": source_rows, **out}


def scd2(strata, work, target_rows, source_rows, runs):
    """SCD Type 2 of `source_rows` (half changed keys, half new keys) into a dimension of
    `target_rows` current rows: Strata's `CALL scd2` vs the standard staged-MERGE recipe on
    Python deltalake (find the changed keys, then one MERGE that closes their current rows
    and inserts new versions and new keys), on copies of the same target, `runs` rounds."""
    _json(strata, (
        "CREATE TABLE silver.dim (id BIGINT, name STRING, amount DOUBLE, "
        "valid_from TIMESTAMP, valid_to TIMESTAMP, is_current BOOLEAN)"
    ))
    _json(strata, (
        "INSERT INTO silver.dim SELECT v * 2, 'name-' || CAST(v AS STRING), CAST(v % 1000 AS DOUBLE), "
        "TIMESTAMP '2020-01-01T00:00:00Z', NULL, true "
        f"FROM (SELECT unnest(range(0, {target_rows})) AS v)"
    ))
    source = _upsert_source(strata, "dim_changes", target_rows, source_rows)
    ts_type = pa.timestamp("us", tz="UTC")

    def via_strata(name):
        return _json(strata, f"CALL scd2(target => 'silver.{name}', source => 'bronze.dim_changes', keys => 'id')")

    def via_deltalake(copy):
        import datetime

        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        dt = deltalake.DeltaTable(str(copy))
        now = pa.scalar(datetime.datetime.now(datetime.timezone.utc), ts_type)
        current = dt.to_pyarrow_dataset().to_table(
            columns=["id", "name", "amount"],
            filter=(ds.field("is_current") == True) & ds.field("id").isin(source["id"]),  # noqa: E712
        )
        joined = source.join(current, "id", join_type="inner", right_suffix="_t")

        def differs(a, b):  # NULL-safe
            return pc.or_kleene(
                pc.fill_null(pc.not_equal(joined[a], joined[b]), False),
                pc.xor(pc.is_null(joined[a]), pc.is_null(joined[b])),
            )

        changed = joined.filter(pc.or_(differs("name", "name_t"), differs("amount", "amount_t")))
        changed = changed.select(["id", "name", "amount"])

        def staged(t, merge_key):
            return t.append_column("merge_key", merge_key).append_column(
                "eff", pa.array([now.as_py()] * t.num_rows, ts_type)
            )

        rows = pa.concat_tables([
            staged(changed, pa.nulls(changed.num_rows, pa.int64())),
            staged(source, source["id"]),
        ])
        return (
            dt.merge(rows, predicate="t.id = s.merge_key AND t.is_current", source_alias="s", target_alias="t")
            .when_matched_update(
                updates={"is_current": "false", "valid_to": "s.eff"},
                predicate="(t.name IS DISTINCT FROM s.name) OR (t.amount IS DISTINCT FROM s.amount)",
            )
            .when_not_matched_insert(updates={
                "id": "s.id", "name": "s.name", "amount": "s.amount",
                "valid_from": "s.eff", "valid_to": "NULL", "is_current": "true",
            })
            .execute()
        )

    def summaries(name, copy):
        mine = _json(strata, (
            "SELECT count(*) AS n, sum(CASE WHEN is_current THEN 1 ELSE 0 END) AS c, "
            "sum(CASE WHEN valid_to IS NOT NULL THEN 1 ELSE 0 END) AS closed, "
            f"sum(CASE WHEN is_current THEN amount ELSE 0 END) AS a FROM silver.{name}"
        ))[0]
        t = deltalake.DeltaTable(str(copy)).to_pyarrow_table()
        cur = t.filter(t["is_current"])
        return mine, {
            "n": t.num_rows,
            "c": cur.num_rows,
            "closed": t.num_rows - pa.compute.count(t["valid_to"], mode="only_null").as_py(),
            "a": pa.compute.sum(cur["amount"]).as_py(),
        }

    out = _rounds(strata, work, "dim", runs, via_strata, via_deltalake, summaries)
    return {"target_rows": target_rows, "source_rows": source_rows, **out}


def _close(mine, theirs):
    """Same counts, same sums up to float rounding."""
    return all(
        abs(float(mine[k]) - float(theirs[k])) <= 1e-9 * max(1.0, abs(float(theirs[k])))
        for k in theirs
    )


def _json(strata, sql):
    req = urllib.request.Request(
        f"{strata.http}/api/v1/query",
        data=json.dumps({"sql": sql}).encode(),
        headers={"authorization": f"Bearer {strata.token}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=7200) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------- report


def summary(r):
    lines = [f"# Strata end-to-end benchmark (SF {r['settings']['sf']}, {THREADS} threads per engine)", ""]
    t = r["tpch"]
    engines = list(t["ratio_vs_datafusion"])
    lines += ["| query | " + " | ".join(f"{e} (ms)" for e in engines) + " | flight ÷ datafusion |", "|---" * (len(engines) + 2) + "|"]
    for q in QUERIES:
        lines.append(
            f"| {q} | "
            + " | ".join(f"{t['median_s'][q][e] * 1e3:.1f}" for e in engines)
            + f" | {t['ratio_vs_datafusion']['strata_flight'][q]:.2f} |"
        )
    lines.append(
        "| geomean ÷ datafusion | "
        + " | ".join(f"{t['geomean_vs_datafusion'][e]:.2f}" for e in engines)
        + " | |"
    )
    s = r["streaming"]
    lines += [
        "",
        f"- lineitem scan: Strata Flight SQL {s['strata_gb_s']:.3f} GB/s (pyarrow.flight client; ADBC "
        f"{s['strata_adbc_gb_s']:.3f} GB/s) vs raw pyarrow.flight {s['raw_flight_gb_s']:.3f} GB/s "
        f"(ratio {s['ratio_vs_raw']:.2f}; ADBC {s['adbc_ratio_vs_raw']:.2f}); largest message body "
        f"{s['largest_message_body_bytes'] / 2**20:.2f} MiB; server peak RSS {s['server_peak_rss_bytes'] / 2**20:.0f} MiB",
    ]
    c = r["cache"]
    lines.append(
        f"- cache hit (GetFlightInfo + DoGet, pyarrow.flight client) p50 {c['hit_p50_ms']:.2f} ms / p99 {c['hit_p99_ms']:.2f} ms, "
        f"ADBC p50 {c['hit_adbc_p50_ms']:.2f} ms / p99 {c['hit_adbc_p99_ms']:.2f} ms, vs one raw Flight DoGet "
        f"p50 {c['raw_p50_ms']:.2f} ms / p99 {c['raw_p99_ms']:.2f} ms (p50 ratio {c['ratio_p50']:.2f}, ADBC {c['adbc_ratio_p50']:.2f})"
    )
    for op in ("merge", "scd2"):
        m = r[op]
        lines.append(
            f"- {op.upper()} {m['source_rows']} → {m['target_rows']} (median of {m['runs']} rounds on fresh copies): Strata {m['strata_s']:.2f} s vs deltalake "
            f"{m['deltalake_s']:.2f} s (ratio {m['ratio']:.2f}); largest peak RSS growth: server "
            f"{m['strata_server_peak_rss_growth_bytes'] / 2**20:.0f} MiB vs deltalake "
            f"{m['deltalake_process_peak_rss_growth_bytes'] / 2**20:.0f} MiB (ratio {m['memory_ratio']:.2f}); "
            f"results equal: {m['results_equal']}"
        )
    if "big_scan" in r:
        b = r["big_scan"]
        lines.append(
            f"- SF {b['sf']:g} lineitem ({b['rows']} rows, {b['logical_bytes'] / 2**30:.2f} GiB Arrow) streamed in "
            f"{b['scan_s']:.1f} s ({b['scan_gb_s']:.3f} GB/s): server peak RSS {b['server_peak_rss_bytes'] / 2**20:.0f} MiB "
            f"(before the scan {b['server_rss_before_bytes'] / 2**20:.0f} MiB); on a freshly started replica "
            f"{b['fresh_server_peak_rss_bytes'] / 2**20:.0f} MiB peak in {b['fresh_server_scan_s']:.1f} s; loaded in {b['load_s']:.0f} s"
        )
    lines += ["", "| clients | qps | p50 ms | p99 ms |", "|---|---|---|---|"]
    for n, x in r["concurrency"].items():
        lines.append(f"| {n} | {x['qps']:.2f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} |")
    lines += ["", "| result | wire bytes | Arrow bytes | rows |", "|---|---|---|---|"]
    for q, x in r["wire"].items():
        lines.append(f"| {q} | {x['wire_bytes']} | {x['arrow_bytes']} | {x['rows']} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strata", default="target/release/strata", help="server binary")
    p.add_argument("--sf", type=float, default=1.0, help="TPC-H scale factor")
    p.add_argument("--runs", type=int, default=3, help="iterations per measurement (median)")
    p.add_argument("--merge-target", type=int, default=10_000_000)
    p.add_argument("--merge-source", type=int, default=1_000_000)
    p.add_argument("--scd2-target", type=int, default=10_000_000)
    p.add_argument("--scd2-source", type=int, default=1_000_000)
    p.add_argument("--rss-sf", type=float, default=10.0, help="scale factor of the big lineitem scan (0: skip)")
    p.add_argument("--concurrency-secs", type=float, default=10.0, help="per client count")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--work", help="scratch directory (default: a temp dir)")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="strata-bench-"))
    binary = str(pathlib.Path(args.strata).resolve())
    results = {
        "settings": {**vars(args), "threads": THREADS, "cpus": os.cpu_count()},
        "loadavg_start": os.getloadavg(),
    }
    files = generate(args.sf, work / "tpch")
    # Generated data is reused between runs in one work dir; the warehouse never is.
    shutil.rmtree(work / "strata", ignore_errors=True)
    strata = Strata(binary, work / "strata", cache=False)
    try:
        results["load_s"], _ = timed(lambda: load(strata, files))
        warehouse = strata.work / "data" / "warehouse"
        results["tpch"] = tpch(strata, files, warehouse, args.runs)
        results["streaming"] = streaming(strata, files, args.runs)
        results["wire"] = wire_bytes(strata)
        results["concurrency"] = concurrency(strata, args.concurrency_secs)
        results["merge"] = merge(strata, work, args.merge_target, args.merge_source, args.runs)
        results["scd2"] = scd2(strata, work, args.scd2_target, args.scd2_source, args.runs)
        if args.rss_sf > 0:
            results["big_scan"] = big_scan(strata, work, args.rss_sf)
    finally:
        strata.stop()
    cached = Strata(binary, work / "strata", cache=True)
    try:
        results["cache"] = cache_hits(cached, files)
    finally:
        cached.stop()
    results["loadavg_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "summary.md").write_text(summary(results))
    print(summary(results))


if __name__ == "__main__":
    main()
