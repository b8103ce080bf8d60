"""Backfill vs interactive queries: the latency of a small BI query while a backfill runs.

A `time_range` model over `--rows` sales spread over `--days` days is backfilled in daily
batches (`--parallelism` at a time) while a client issues a small aggregate query over a
gold table in a loop (the result cache off, so every query plans and scans). Reported: the
query's p50 / p95 idle and during the backfill, their ratio, and the backfill's duration.

Usage (release binary, the bench venv of run.py):
  PATH=.bench-venv/bin:$PATH .bench-venv/bin/python benches/e2e/backfill.py \
      --strata $PWD/target/release/strata --work /tmp/backfill-work --out /tmp/backfill-out
"""

import argparse
import datetime
import json
import pathlib
import statistics
import time

import flows

flows.CONFIG = """
[[pipelines.principals]]
name = "etl"
roles = ["etl"]
""" + "".join(
    f'\n[[access.grants]]\nrole = "etl"\nprivilege = "{p}"\non = "{on}"\n'
    for p, on in [("SELECT", "bronze"), ("SELECT", "gold"), ("INSERT", "gold"), ("MODIFY", "gold")]
)

DAILY = """/* strata
kind = "time_range"
time_column = "day"
batch_size = "day"
start = "2026-01-01"
*/
SELECT date_trunc('day', sold_at) AS day, region, sum(amount) AS revenue, count(*) AS sales,
       approx_distinct(customer) AS customers
FROM bronze.sales WHERE sold_at >= $start AND sold_at < $end
GROUP BY date_trunc('day', sold_at), region
"""

SMALL = "SELECT region, sum(v) AS v, count(*) AS n FROM gold.kpi WHERE v > 10 GROUP BY region ORDER BY region"


def timed(s, sql):
    t = time.perf_counter()
    s.sql(sql)
    return (time.perf_counter() - t) * 1000


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", required=True)
    ap.add_argument("--work", default="/tmp/backfill-work")
    ap.add_argument("--out", default="backfill-out")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--idle-samples", type=int, default=200)
    a = ap.parse_args()
    s = flows.Server(a.strata, a.work)
    try:
        s.sql("CREATE TABLE bronze.sales (id BIGINT, region STRING, customer BIGINT, amount DOUBLE, sold_at TIMESTAMP)")
        s.sql(f"INSERT INTO bronze.sales SELECT x AS id, 'r' || CAST(x % 7 AS STRING) AS region, x % 100003 AS customer, "
              f"CAST(x % 1000 AS DOUBLE) AS amount, "
              f"to_timestamp_seconds(1767225600 + (x % {a.days}) * 86400 + x % 86400) AS sold_at "
              f"FROM (SELECT unnest(range(0, {a.rows})) AS x)")
        s.sql("CREATE TABLE gold.kpi AS SELECT 'r' || CAST(x % 7 AS STRING) AS region, x AS v "
              "FROM (SELECT unnest(range(0, 1000)) AS x)")
        s.call("PUT", "/api/v1/pipelines/sales",
               {"pipeline": {"run_as": "etl"}, "models": [{"path": "gold/daily.sql", "sql": DAILY}]})
        for _ in range(20):
            timed(s, SMALL)
        idle = [timed(s, SMALL) for _ in range(a.idle_samples)]
        to = (datetime.date(2026, 1, 1) + datetime.timedelta(days=a.days)).isoformat()
        start = time.perf_counter()
        run = s.call("POST", "/api/v1/pipelines/sales/backfill",
                     {"from": "2026-01-01", "to": to, "parallelism": a.parallelism})
        busy = []
        while True:
            busy.append(timed(s, SMALL))
            record = s.call("GET", f"/api/v1/runs/{run['run_id']}")
            if record["status"] not in ("queued", "running"):
                break
        backfill_s = time.perf_counter() - start
        if record["status"] != "succeeded":
            raise RuntimeError(json.dumps(record))
    finally:
        s.stop()
    result = {
        "settings": vars(a),
        "batches": record["models"][0]["commits"],
        "backfill_s": backfill_s,
        "idle_ms": idle,
        "during_ms": busy,
    }
    ratio = statistics.median(busy) / statistics.median(idle)
    lines = [
        f"# Backfill vs interactive queries ({flows.THREADS} threads)",
        "",
        f"- backfill of {result['batches']} daily batches over {a.rows:,} rows, parallelism {a.parallelism}: "
        f"{backfill_s:.1f} s",
        f"- small query idle: p50 {statistics.median(idle):.1f} ms, p95 {pct(idle, 95):.1f} ms ({len(idle)} samples)",
        f"- during the backfill: p50 {statistics.median(busy):.1f} ms, p95 {pct(busy, 95):.1f} ms "
        f"({len(busy)} samples): p50 ratio {ratio:.2f}x (target ≤ 2x)",
    ]
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backfill.json").write_text(json.dumps(result, indent=2))
    (out / "backfill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
