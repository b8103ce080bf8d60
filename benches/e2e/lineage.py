"""Lineage's cost: the same writes with lineage off and on (with OpenLineage emission to a
collector on loopback).

Three servers on the same machine: `[lineage] enabled = false` (off), lineage recorded in
the commits (record), and recorded plus OpenLineage events to an HTTP collector on loopback
that answers 200 (emit). Each runs:
1. a small INSERT … SELECT (one row from a 1,000-row table), `--inserts` times: median
   client latency; target: lineage adds ≤ 1 ms;
2. a MERGE of a `--rows`-row source (half updates, half new keys) into a `--rows`-row
   target, `--rounds` times on fresh copies: median wall time; target: ≤ 2% more.
The arms alternate (off, record, emit, off, …) so drift of the machine hits all three.

Usage (release binary, the bench venv of run.py):
  PATH=.bench-venv/bin:$PATH .bench-venv/bin/python benches/e2e/lineage.py \
      --strata $PWD/target/release/strata --work /tmp/lineage-work --out /tmp/lineage-out
"""

import argparse
import http.server
import json
import multiprocessing
import pathlib
import statistics
import time

import flows


class Collector(http.server.BaseHTTPRequestHandler):
    received = None  # a multiprocessing.Value shared with the benchmark
    # Keep-alive, as Marquez, DataHub and OpenMetadata answer (HTTP/1.0 would make the
    # sender open a connection per event).
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with Collector.received.get_lock():
            Collector.received.value += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def serve_collector(port, received):
    Collector.received = received
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    port.value = server.server_address[1]
    server.serve_forever()


def start_collector():
    """The collector in a process of its own, as a real one is: its work never holds the
    interpreter lock of the client that times the requests."""
    port = multiprocessing.Value("i", 0)
    received = multiprocessing.Value("i", 0)
    proc = multiprocessing.Process(target=serve_collector, args=(port, received), daemon=True)
    proc.start()
    while port.value == 0:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port.value}", received


def server(binary, work, arm, collector):
    base = flows.CONFIG
    if arm == "emit":
        flows.CONFIG = base + f'\n[lineage.openlineage]\nurl = "{collector}"\n'
    elif arm == "off":
        flows.CONFIG = base + "\n[lineage]\nenabled = false\n"
    try:
        return flows.Server(binary, work)
    finally:
        flows.CONFIG = base


def small_inserts(servers, n):
    """The same INSERTs on every arm, interleaved (arm after arm for each statement)."""
    for s in servers.values():
        s.sql("CREATE TABLE bronze.src (id BIGINT, v DOUBLE, tag STRING)")
        s.sql("INSERT INTO bronze.src SELECT x AS id, CAST(x AS DOUBLE) AS v, 't' || CAST(x AS STRING) AS tag "
              "FROM (SELECT unnest(range(0, 1000)) AS x)")
        s.sql("CREATE TABLE gold.small (id BIGINT, v DOUBLE, tag STRING)")
    times = {arm: [] for arm in servers}
    cpu = {arm: 0.0 for arm in servers}
    for i in range(n):
        for arm, s in servers.items():
            c = cpu_s(s)
            t = time.perf_counter()
            s.sql(f"INSERT INTO gold.small SELECT id, v * 2, upper(tag) FROM bronze.src WHERE id = {i % 1000}")
            times[arm].append(time.perf_counter() - t)
            if i >= n // 10:
                cpu[arm] += cpu_s(s) - c
    # The first tenth warms up; CPU is the server's (all threads) per INSERT, in ms.
    kept = n - n // 10
    return {arm: v[n // 10:] for arm, v in times.items()}, {arm: c / kept * 1000 for arm, c in cpu.items()}


def cpu_s(s):
    """The server's CPU seconds so far (user + system, all threads)."""
    return sum(s.ps.cpu_times()[:2])


def merge(s, rows, round_):
    t_name = f"silver.target{round_}"
    s.sql(f"CREATE TABLE {t_name} AS SELECT x * 2 AS id, 'name-' || CAST(x AS STRING) AS name, "
          f"CAST(x % 1000 AS DOUBLE) AS amount FROM (SELECT unnest(range(0, {rows})) AS x)")
    if round_ == 0:
        s.sql(f"CREATE TABLE bronze.changes AS SELECT x AS id, 'new-' || CAST(x AS STRING) AS name, "
              f"CAST(x % 777 AS DOUBLE) AS amount FROM (SELECT unnest(range(0, {rows})) AS x)")
    c = cpu_s(s)
    t = time.perf_counter()
    s.sql(f"MERGE INTO {t_name} AS t USING bronze.changes AS s ON t.id = s.id "
          "WHEN MATCHED THEN UPDATE SET name = s.name, amount = s.amount "
          "WHEN NOT MATCHED THEN INSERT (id, name, amount) VALUES (s.id, s.name, s.amount)")
    return time.perf_counter() - t, cpu_s(s) - c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", required=True)
    ap.add_argument("--work", default="/tmp/lineage-work")
    ap.add_argument("--out", default="lineage-out")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--inserts", type=int, default=300)
    a = ap.parse_args()
    collector, received = start_collector()
    arms = ("off", "record", "emit")
    servers = {arm: server(a.strata, f"{a.work}/{arm}", arm, collector) for arm in arms}
    inserts = {arm: [] for arm in servers}
    merges = {arm: [] for arm in servers}
    merge_cpu = {arm: [] for arm in servers}
    try:
        inserts, insert_cpu = small_inserts(servers, a.inserts)
        for r in range(a.rounds):
            for arm, s in servers.items():
                wall, cpu = merge(s, a.rows, r)
                merges[arm].append(wall)
                merge_cpu[arm].append(cpu)
    finally:
        for s in servers.values():
            s.stop()
    ins = {arm: statistics.median(v) * 1000 for arm, v in inserts.items()}
    mrg = {arm: statistics.median(v) for arm, v in merges.items()}
    mcpu = {arm: statistics.median(v) for arm, v in merge_cpu.items()}
    result = {
        "settings": vars(a),
        "insert_ms": inserts and {arm: [t * 1000 for t in v] for arm, v in inserts.items()},
        "merge_s": merges,
        "insert_cpu_ms": insert_cpu,
        "merge_cpu_s": merge_cpu,
        "events_received": received.value,
    }
    lines = [
        f"# Lineage's cost ({flows.THREADS} threads)",
        "",
        f"- small INSERT … SELECT, median of {len(inserts['off'])}: lineage off {ins['off']:.2f} ms; "
        f"recorded {ins['record']:.2f} ms (+{ins['record'] - ins['off']:.2f} ms); recorded and emitted "
        f"{ins['emit']:.2f} ms (+{ins['emit'] - ins['off']:.2f} ms; the collector, a Python process, "
        f"shares the two cores); target ≤ 1 ms",
        f"- MERGE of {a.rows:,} source rows into {a.rows:,}, median of {a.rounds}: off {mrg['off']:.2f} s, "
        f"recorded {mrg['record']:.2f} s ({(mrg['record'] / mrg['off'] - 1) * 100:+.1f}%), emitted "
        f"{mrg['emit']:.2f} s ({(mrg['emit'] / mrg['off'] - 1) * 100:+.1f}%); target ≤ 2%",
        f"- server CPU (all threads): per small INSERT off {insert_cpu['off']:.2f} ms, recorded "
        f"{insert_cpu['record']:.2f} ms (+{insert_cpu['record'] - insert_cpu['off']:.2f}), emitted "
        f"{insert_cpu['emit']:.2f} ms (+{insert_cpu['emit'] - insert_cpu['off']:.2f}); per MERGE (median) off "
        f"{mcpu['off']:.2f} s, recorded {mcpu['record']:.2f} s ({(mcpu['record'] / mcpu['off'] - 1) * 100:+.1f}%), "
        f"emitted {mcpu['emit']:.2f} s ({(mcpu['emit'] / mcpu['off'] - 1) * 100:+.1f}%)",
        f"- OpenLineage events the collector received: {received.value}",
    ]
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lineage.json").write_text(json.dumps(result, indent=2))
    (out / "lineage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
