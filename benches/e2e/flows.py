"""Flows benchmark: the cost of the pipeline machinery against the same work by hand.

1. An incremental `merge` model consuming 1M changed rows into a 10M-row silver table, vs
   the same MERGE (same dedup, same condition) issued by hand through SQL on an identical
   copy of the table: wall time and the server's peak RSS growth, median of the rounds.
2. A no-op run (nothing new) of a model whose source has 1,000 versions: the run's own
   duration (record) and the client's POST → terminal status.

Usage (release binary, the bench venv of run.py):
  PATH=.bench-venv/bin:$PATH .bench-venv/bin/python benches/e2e/flows.py \
      --strata $PWD/target/release/strata --work /tmp/flows-work --out /tmp/flows-out
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request

import psutil

from run import PeakRss

THREADS = 2

CONFIG = """
[[pipelines.principals]]
name = "etl"
roles = ["etl"]
""" + "".join(
    f'\n[[access.grants]]\nrole = "etl"\nprivilege = "{p}"\non = "{on}"\n'
    for p, on in [("SELECT", "bronze"), ("SELECT", "silver"), ("INSERT", "silver"), ("MODIFY", "silver")]
)

MERGE_MODEL = """/* strata
kind = "merge"
unique_key = ["id"]
sequence_by = "ts"
*/
SELECT id, v, ts, _change_type FROM stream('bronze.changes')
"""

APPEND_MODEL = """/* strata
kind = "append"
*/
SELECT id FROM stream('bronze.ticks')
"""


class Server:
    def __init__(self, binary, work):
        self.work = pathlib.Path(work)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        config = self.work / "strata.toml"
        config.write_text(CONFIG)
        env = dict(os.environ)
        env.update({
            "STRATA_CONFIG": str(config),
            "STRATA__SERVER__HTTP_ADDR": "127.0.0.1:0",
            "STRATA__SERVER__FLIGHT_ADDR": "127.0.0.1:0",
            "STRATA__QUERY__TARGET_PARTITIONS": str(THREADS),
            "STRATA__QUERY__TIMEOUT_SECS": "0",
            # range(0, 10M) builds the rows in one call.
            "STRATA__QUERY__MAX_FUNCTION_OUTPUT_BYTES": str(1 << 30),
            "STRATA__CACHE__ENABLED": "false",
            "STRATA__LOG__LEVEL": "warn",
        })
        self.proc = subprocess.Popen([binary, "serve"], env=env, cwd=self.work,
                                     stdout=subprocess.PIPE, text=True)
        self.http = None
        while self.http is None:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("strata did not start")
            if line.strip().startswith("REST"):
                self.http = line.split()[1]
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.token = subprocess.run(
            [binary, "token", "--sub", "bench", "--role", "admin", "--role", "etl"],
            env=env, cwd=self.work, capture_output=True, text=True, check=True,
        ).stdout.strip()
        self.ps = psutil.Process(self.proc.pid)

    def call(self, method, path, body=None):
        req = urllib.request.Request(
            f"{self.http}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=7200) as r:
                text = r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path}: {e.code} {e.read().decode()}") from None
        return json.loads(text) if text else None

    def sql(self, sql):
        return self.call("POST", "/api/v1/query", {"sql": sql})

    def version(self, table):
        layer, name = table.split(".")
        return self.call("GET", f"/api/v1/tables/{layer}/{name}")["version"]

    def run(self, pipeline, poll=0.005):
        """Starts a run and polls it to the end: (client seconds, record)."""
        t = time.perf_counter()
        record = self.call("POST", f"/api/v1/pipelines/{pipeline}/runs", {})
        while record["status"] in ("queued", "running"):
            time.sleep(poll)
            record = self.call("GET", f"/api/v1/runs/{record['run_id']}")
        elapsed = time.perf_counter() - t
        if record["status"] != "succeeded":
            raise RuntimeError(json.dumps(record))
        return elapsed, record

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def record_seconds(record):
    from datetime import datetime
    start = datetime.fromisoformat(record["started_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(record["ended_at"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def merge_overhead(s, target_rows, change_rows, rounds):
    s.sql("CREATE TABLE bronze.changes (id BIGINT, v BIGINT, ts TIMESTAMP) "
          "TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
    s.sql(f"INSERT INTO bronze.changes SELECT x AS id, x AS v, TIMESTAMP '2026-01-01T00:00:00Z' AS ts "
          f"FROM (SELECT unnest(range(0, {target_rows})) AS x)")
    s.call("PUT", "/api/v1/pipelines/orders",
           {"pipeline": {"run_as": "etl"}, "models": [{"path": "silver/orders.sql", "sql": MERGE_MODEL}]})
    initial, _ = s.run("orders", poll=0.05)
    # The same table, with the change data feed on as every model table has it (delta-rs
    # then writes change files for every MERGE: without it the comparison is unfair).
    s.sql("CREATE TABLE silver.hand AS SELECT id, v, ts FROM silver.orders")
    s.sql("ALTER TABLE silver.hand SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
    out = {"initial_load_s": initial, "rounds": []}
    step = max(1, target_rows // change_rows)
    for r in range(rounds):
        s.sql(f"INSERT INTO bronze.changes SELECT x * {step} AS id, x + {r + 1} AS v, "
              f"TIMESTAMP '2026-01-01T00:00:00Z' + INTERVAL '{r + 1} days' AS ts "
              f"FROM (SELECT unnest(range(0, {change_rows})) AS x)")
        v = s.version("bronze.changes")
        hand_sql = (
            "MERGE INTO silver.hand t USING ("
            " SELECT id, v, ts, __strata_delete FROM ("
            "  SELECT *, row_number() OVER (PARTITION BY id ORDER BY ts DESC, _commit_version DESC) AS rn,"
            "   COALESCE(_change_type = 'delete', false) AS __strata_delete"
            f"  FROM (SELECT id, v, ts, _change_type, _commit_version FROM table_changes('bronze.changes', {v}, {v})"
            "        WHERE _change_type IN ('insert', 'update_postimage', 'delete')) c) r WHERE rn = 1) s"
            " ON t.id = s.id"
            " WHEN MATCHED AND s.__strata_delete AND (t.ts IS NULL OR s.ts > t.ts) THEN DELETE"
            " WHEN MATCHED AND NOT s.__strata_delete AND (t.ts IS NULL OR s.ts > t.ts) THEN UPDATE SET id = s.id, v = s.v, ts = s.ts"
            " WHEN NOT MATCHED AND NOT s.__strata_delete THEN INSERT (id, v, ts) VALUES (s.id, s.v, s.ts)"
        )
        # Alternate which goes first, so neither always meets the warmer page cache.
        order = ["flow", "hand"] if r % 2 == 0 else ["hand", "flow"]
        row = {}
        for which in order:
            with PeakRss(s.ps) as rss:
                if which == "flow":
                    secs, record = s.run("orders", poll=0.01)
                    row["flow_s"] = secs
                    row["flow_record_s"] = record_seconds(record)
                    row["flow_rows"] = record["models"][0]["rows_out"]
                else:
                    t = time.perf_counter()
                    res = s.sql(hand_sql)
                    row["hand_s"] = time.perf_counter() - t
                    row["hand_rows"] = res[0].get("rows_updated", 0) + res[0].get("rows_inserted", 0)
            row[f"{which}_rss_growth_mib"] = rss.growth / 2**20
        out["rounds"].append(row)
    same = s.sql("SELECT count(*) AS n FROM (SELECT id, v, ts FROM silver.orders EXCEPT SELECT id, v, ts FROM silver.hand) d")
    out["tables_equal"] = same[0]["n"] == 0 and \
        s.sql("SELECT count(*) AS n FROM silver.orders")[0]["n"] == s.sql("SELECT count(*) AS n FROM silver.hand")[0]["n"]
    return out


def noop(s, versions, samples):
    s.sql("CREATE TABLE bronze.ticks (id BIGINT) TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
    for i in range(versions - 1):
        s.sql(f"INSERT INTO bronze.ticks VALUES ({i})")
    s.call("PUT", "/api/v1/pipelines/ticks",
           {"pipeline": {"run_as": "etl"}, "models": [{"path": "silver/ticks.sql", "sql": APPEND_MODEL}]})
    catch_up, _ = s.run("ticks", poll=0.01)
    client, server = [], []
    for _ in range(samples):
        secs, record = s.run("ticks", poll=0.002)
        assert record["models"][0]["commits"] == 0, record
        client.append(secs)
        server.append(record_seconds(record))
    return {
        "source_versions": s.version("bronze.ticks") + 1,
        "catch_up_s": catch_up,
        "noop_client_ms": [x * 1000 for x in client],
        "noop_record_ms": [x * 1000 for x in server],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", required=True)
    ap.add_argument("--work", default="/tmp/flows-work")
    ap.add_argument("--out", default="flows-out")
    ap.add_argument("--target-rows", type=int, default=10_000_000)
    ap.add_argument("--change-rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=20)
    a = ap.parse_args()
    s = Server(a.strata, a.work)
    try:
        result = {
            "settings": vars(a),
            "merge": merge_overhead(s, a.target_rows, a.change_rows, a.rounds),
            "noop": noop(s, a.versions, a.samples),
        }
    finally:
        s.stop()
    m = result["merge"]
    med = lambda k: statistics.median(r[k] for r in m["rounds"])
    n = result["noop"]
    lines = [
        f"# Flows benchmark ({THREADS} threads)",
        "",
        f"- merge model, {a.change_rows:,} changes into {a.target_rows:,} rows (median of {a.rounds}): "
        f"flow {med('flow_s'):.2f} s (run record {med('flow_record_s'):.2f} s) vs the same MERGE by hand "
        f"{med('hand_s'):.2f} s: overhead {100 * (med('flow_s') / med('hand_s') - 1):+.1f}%; peak RSS growth "
        f"flow {med('flow_rss_growth_mib'):.0f} MiB vs hand {med('hand_rss_growth_mib'):.0f} MiB; "
        f"tables equal: {m['tables_equal']}; initial 10M load {m['initial_load_s']:.1f} s",
        f"- no-op run on a {n['source_versions']}-version source: run record p50 "
        f"{statistics.median(n['noop_record_ms']):.1f} ms / max {max(n['noop_record_ms']):.1f} ms, "
        f"client POST → terminal p50 {statistics.median(n['noop_client_ms']):.1f} ms; catching up 1,000 versions "
        f"in one run {n['catch_up_s']:.2f} s",
    ]
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flows.json").write_text(json.dumps(result, indent=2))
    (out / "flows.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
