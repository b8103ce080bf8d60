"""Lineage's cost: the same writes with lineage off and on (with OpenLineage emission to a
collector on loopback).

Two servers on the same machine, one with `[lineage] enabled = false`, one with lineage on
and `[lineage.openlineage] url` pointing at a local HTTP collector (answers 200). Each runs:
1. a small INSERT … SELECT (one row from a 1,000-row table), `--inserts` times: median
   client latency; target: lineage adds ≤ 1 ms;
2. a MERGE of a `--rows`-row source (half updates, half new keys) into a `--rows`-row
   target, `--rounds` times on fresh copies: median wall time; target: ≤ 2% more.
The arms alternate (off, on, off, on …) so drift of the machine hits both.

Usage (release binary, the bench venv of run.py):
  PATH=.bench-venv/bin:$PATH .bench-venv/bin/python benches/e2e/lineage.py \
      --strata $PWD/target/release/strata --work /tmp/lineage-work --out /tmp/lineage-out
"""

import argparse
import http.server
import json
import pathlib
import statistics
import threading
import time

import flows


class Collector(http.server.BaseHTTPRequestHandler):
    received = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Collector.received += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def start_collector():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def server(binary, work, lineage, collector):
    base = flows.CONFIG
    if lineage:
        flows.CONFIG = base + f'\n[lineage.openlineage]\nurl = "{collector}"\n'
    else:
        flows.CONFIG = base + "\n[lineage]\nenabled = false\n"
    try:
        return flows.Server(binary, work)
    finally:
        flows.CONFIG = base


def small_inserts(s, n):
    s.sql("CREATE TABLE bronze.src (id BIGINT, v DOUBLE, tag STRING)")
    s.sql("INSERT INTO bronze.src SELECT x AS id, CAST(x AS DOUBLE) AS v, 't' || CAST(x AS STRING) AS tag "
          "FROM (SELECT unnest(range(0, 1000)) AS x)")
    s.sql("CREATE TABLE gold.small (id BIGINT, v DOUBLE, tag STRING)")
    times = []
    for i in range(n):
        t = time.perf_counter()
        s.sql(f"INSERT INTO gold.small SELECT id, v * 2, upper(tag) FROM bronze.src WHERE id = {i % 1000}")
        times.append(time.perf_counter() - t)
    return times[n // 10:]  # the first tenth warms up


def merge(s, rows, round_):
    t_name = f"silver.target{round_}"
    s.sql(f"CREATE TABLE {t_name} AS SELECT x * 2 AS id, 'name-' || CAST(x AS STRING) AS name, "
          f"CAST(x % 1000 AS DOUBLE) AS amount FROM (SELECT unnest(range(0, {rows})) AS x)")
    if round_ == 0:
        s.sql(f"CREATE TABLE bronze.changes AS SELECT x AS id, 'new-' || CAST(x AS STRING) AS name, "
              f"CAST(x % 777 AS DOUBLE) AS amount FROM (SELECT unnest(range(0, {rows})) AS x)")
    t = time.perf_counter()
    s.sql(f"MERGE INTO {t_name} AS t USING bronze.changes AS s ON t.id = s.id "
          "WHEN MATCHED THEN UPDATE SET name = s.name, amount = s.amount "
          "WHEN NOT MATCHED THEN INSERT (id, name, amount) VALUES (s.id, s.name, s.amount)")
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", required=True)
    ap.add_argument("--work", default="/tmp/lineage-work")
    ap.add_argument("--out", default="lineage-out")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inserts", type=int, default=300)
    a = ap.parse_args()
    collector = start_collector()
    servers = {arm: server(a.strata, f"{a.work}/{arm}", arm == "on", collector) for arm in ("off", "on")}
    inserts = {arm: [] for arm in servers}
    merges = {arm: [] for arm in servers}
    try:
        for arm, s in servers.items():
            inserts[arm] = small_inserts(s, a.inserts)
        for r in range(a.rounds):
            for arm, s in servers.items():
                merges[arm].append(merge(s, a.rows, r))
    finally:
        for s in servers.values():
            s.stop()
    ins = {arm: statistics.median(v) * 1000 for arm, v in inserts.items()}
    mrg = {arm: statistics.median(v) for arm, v in merges.items()}
    result = {
        "settings": vars(a),
        "insert_ms": inserts and {arm: [t * 1000 for t in v] for arm, v in inserts.items()},
        "merge_s": merges,
        "events_received": Collector.received,
    }
    lines = [
        f"# Lineage's cost ({flows.THREADS} threads)",
        "",
        f"- small INSERT … SELECT, median of {len(inserts['on'])}: lineage off {ins['off']:.2f} ms, "
        f"on with OpenLineage {ins['on']:.2f} ms (+{ins['on'] - ins['off']:.2f} ms; target ≤ 1 ms)",
        f"- MERGE of {a.rows:,} source rows into {a.rows:,}, median of {a.rounds}: off {mrg['off']:.2f} s, "
        f"on {mrg['on']:.2f} s ({(mrg['on'] / mrg['off'] - 1) * 100:+.1f}%; target ≤ 2%)",
        f"- OpenLineage events the collector received: {Collector.received}",
    ]
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lineage.json").write_text(json.dumps(result, indent=2))
    (out / "lineage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
