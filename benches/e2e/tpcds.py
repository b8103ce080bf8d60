#!/usr/bin/env python3
"""TPC-DS through Strata, checked against DuckDB and timed against DuckDB and DataFusion.

  * data: DuckDB's TPC-DS extension (PyPI `duckdb-extension-tpcds`, pinned to the `duckdb`
    version) generates the 24 tables at `--sf`, written once to Parquet;
  * Strata: the real binary, every table loaded with ADBC `adbc_ingest` into `gold`, the 99
    queries sent unmodified over Flight SQL with the ADBC driver (unqualified names resolve
    through `query.default_layer`);
  * answers: each result compared with DuckDB's on the same data (rows as multisets, numbers
    to 1e-6 relative; the extension's own answers exist only for SF 1 and 10);
  * timing: Strata (Flight SQL), the Python `datafusion` package in process over exactly the
    Parquet files of Strata's Delta tables, DuckDB in process over the generated Parquet;
    engine order rotated per run, medians, ratios per query and geomeans.

Usage (from the repository root; compare with the release build):
    cargo build --release
    python3 -m venv .bench-venv && .bench-venv/bin/pip install -r benches/e2e/requirements.txt
    .bench-venv/bin/python benches/e2e/tpcds.py --strata target/release/strata --sf 1 --out bench-out
"""

import argparse
import json
import math
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import datafusion
import deltalake
import duckdb
import duckdb_extension_tpcds
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from run import THREADS, Strata, geomean, timed  # noqa: E402


def extension_path():
    base = pathlib.Path(duckdb_extension_tpcds.__file__).parent / "extensions"
    found = sorted(base.glob("*/tpcds.duckdb_extension"))
    if not found:
        raise RuntimeError(f"no TPC-DS extension under {base}")
    return found[-1]


def generate(sf, data):
    """The 24 tables as Parquet under `data`, and the 99 queries."""
    con = duckdb.connect()
    con.execute(f"LOAD '{extension_path()}'")
    queries = {n: q for n, q in con.execute("SELECT query_nr, query FROM tpcds_queries()").fetchall()}
    if not (data / "store_sales.parquet").exists():
        data.mkdir(parents=True, exist_ok=True)
        con.execute(f"CALL dsdgen(sf={sf})")
        for (t,) in con.execute("SHOW TABLES").fetchall():
            con.execute(f"COPY {t} TO '{data / (t + '.parquet')}' (FORMAT parquet)")
    con.close()
    files = {p.stem: p for p in sorted(data.glob("*.parquet"))}
    return files, queries


def load(strata, files):
    # The ADBC Go driver sends each batch as one message and does not split it: batches stay
    # well under its 16 MiB limit (catalog_sales: 34 columns, ~380 bytes a row).
    with strata.connect() as conn, conn.cursor() as cur:
        for table, path in files.items():
            f = pq.ParquetFile(path)
            reader = pa.RecordBatchReader.from_batches(f.schema_arrow, f.iter_batches(16384))
            cur.adbc_ingest(table, reader, mode="create", db_schema_name="gold")
        conn.commit()


def canonical(table):
    """A result as a sorted list of rows of comparable values (names and types aside)."""
    def value(v):
        if v is None:
            return (0, "")
        if isinstance(v, bool):
            return (1, str(v))
        if isinstance(v, (int, float)) or hasattr(v, "as_tuple"):
            return (2, float(v))
        return (3, str(v))

    rows = [tuple(value(v) for v in row.values()) for row in table.to_pylist()]
    return sorted(rows, key=lambda r: [(k, x if isinstance(x, str) else f"{x:.6e}") for k, x in r])


def equal(a, b):
    if a.num_rows != b.num_rows or a.num_columns != b.num_columns:
        return False
    for ra, rb in zip(canonical(a), canonical(b)):
        for (ka, x), (kb, y) in zip(ra, rb):
            if ka != kb:
                return False
            if ka == 2:
                if abs(x - y) > 1e-6 * max(1.0, abs(x), abs(y)):
                    return False
            elif x != y:
                return False
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strata", default="target/release/strata", help="server binary")
    p.add_argument("--sf", type=float, default=1.0, help="TPC-DS scale factor")
    p.add_argument("--runs", type=int, default=3, help="timed runs per query and engine (median)")
    p.add_argument("--queries", default="", help="comma-separated query numbers (default: all 99)")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--work", help="scratch directory (default: a temp dir)")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="strata-tpcds-"))
    files, queries = generate(args.sf, work / f"tpcds-sf{args.sf:g}")
    if args.queries:
        wanted = {int(q) for q in args.queries.split(",")}
        queries = {n: q for n, q in queries.items() if n in wanted}

    # Strata with the result cache off: every run executes.
    server_dir = work / "strata"
    shutil.rmtree(server_dir, ignore_errors=True)
    strata = Strata(args.strata, server_dir, cache=False)
    load_s, _ = timed(lambda: load(strata, files))
    warehouse = server_dir / "data" / "warehouse"

    df = datafusion.SessionContext(datafusion.SessionConfig().with_target_partitions(THREADS))
    for t in files:
        linked = work / "datafusion" / t
        shutil.rmtree(linked, ignore_errors=True)
        linked.mkdir(parents=True)
        for uri in deltalake.DeltaTable(str(warehouse / "gold" / t)).file_uris():
            src = pathlib.Path(uri.removeprefix("file://"))
            os.link(src, linked / src.name)
        df.register_listing_table(t, str(linked), file_extension=".parquet")
    duck = duckdb.connect()
    duck.execute(f"SET threads = {THREADS}")
    for t, path in files.items():
        duck.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{path}')")
    conn = strata.connect()
    cur = conn.cursor()

    def flight(sql):
        cur.execute(sql)
        return cur.fetch_arrow_table()

    run = {
        "strata": flight,
        "datafusion": lambda sql: df.sql(sql).to_arrow_table(),
        "duckdb": lambda sql: duck.sql(sql).to_arrow_table(),
    }
    names = list(run)
    samples = {n: {e: [] for e in names} for n in queries}
    errors = {n: {} for n in queries}
    equal_duckdb = {}
    for i in range(args.runs):
        order = names[i % len(names):] + names[: i % len(names)]
        for n, sql in queries.items():
            results = {}
            for e in order:
                if e in errors[n]:
                    continue
                try:
                    secs, table = timed(lambda: run[e](sql))
                except Exception as exc:  # noqa: BLE001 - recorded per engine and query
                    errors[n][e] = str(exc).splitlines()[0][:300]
                    if e == "strata":
                        cur.close()
                        cur = conn.cursor()
                    continue
                samples[n][e].append(secs)
                results[e] = table
            if i == 0 and "strata" in results and "duckdb" in results:
                equal_duckdb[n] = equal(results["strata"], results["duckdb"])
            print(f"run {i} q{n}: " + ", ".join(f"{e} {samples[n][e][-1]:.3f}s" for e in names if samples[n][e] and e in results)
                  + (f"  errors {errors[n]}" if errors[n] else "")
                  + ("" if equal_duckdb.get(n, True) else "  DIFFERS from DuckDB"), flush=True)
    conn.close()
    strata.stop()

    med = {n: {e: statistics.median(s) for e, s in per.items() if s} for n, per in samples.items()}
    both = [n for n in queries if "strata" in med[n] and "datafusion" in med[n]]
    duck_both = [n for n in queries if "strata" in med[n] and "duckdb" in med[n]]
    vs_df = {n: med[n]["strata"] / med[n]["datafusion"] for n in both}
    vs_duck = {n: med[n]["strata"] / med[n]["duckdb"] for n in duck_both}
    result = {
        "sf": args.sf,
        "runs": args.runs,
        "load_s": load_s,
        "median_s": med,
        "samples_s": samples,
        "errors": errors,
        "equal_duckdb": equal_duckdb,
        "strata_ran": sum(1 for n in queries if "strata" in med[n]),
        "strata_equal_duckdb": sum(1 for v in equal_duckdb.values() if v),
        "ratio_vs_datafusion": vs_df,
        "ratio_vs_duckdb": vs_duck,
        "geomean_vs_datafusion": geomean(list(vs_df.values())) if vs_df else None,
        "geomean_vs_duckdb": geomean(list(vs_duck.values())) if vs_duck else None,
        "total_s": {e: sum(med[n][e] for n in both if e in med[n]) for e in names},
        "loadavg": os.getloadavg(),
    }
    (out / "tpcds.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [
        f"# TPC-DS SF{args.sf:g}: Strata over Flight SQL vs DataFusion and DuckDB",
        "",
        f"- ran {result['strata_ran']} / {len(queries)}; equal to DuckDB {result['strata_equal_duckdb']} / {len(equal_duckdb)}",
        f"- geomean ÷ datafusion {result['geomean_vs_datafusion']:.2f} over {len(vs_df)} queries; ÷ duckdb {result['geomean_vs_duckdb']:.2f}" if vs_df and vs_duck else "- no ratios",
        f"- totals (queries all three ran): " + ", ".join(f"{e} {s:.1f} s" for e, s in result["total_s"].items()),
        f"- load {load_s:.1f} s; load average {result['loadavg']}",
        "",
        "| q | strata s | datafusion s | duckdb s | ÷ df | ÷ duckdb | equal | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in queries:
        m = med[n]
        fmt = lambda e: f"{m[e]:.3f}" if e in m else "—"  # noqa: E731
        lines.append(
            f"| {n} | {fmt('strata')} | {fmt('datafusion')} | {fmt('duckdb')} | "
            f"{vs_df[n]:.2f} | " if n in vs_df else f"| {n} | {fmt('strata')} | {fmt('datafusion')} | {fmt('duckdb')} | — | "
        )
        lines[-1] += (f"{vs_duck[n]:.2f} | " if n in vs_duck else "— | ") + f"{equal_duckdb.get(n, '—')} | {errors[n] or ''} |"
    (out / "tpcds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))


if __name__ == "__main__":
    main()
