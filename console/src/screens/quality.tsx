// Quality: failing expectations and audits across pipelines (from system.expectation_results
// and system.audit_results, read through the policy-enforcing catalog like any table), and
// a browser of the quarantine tables the token may read.
import { ApiError, query } from "../api";
import { SuffixTables } from "../browse";
import { Show, useLoad } from "../ui";
import { ResultsTable } from "./pipelines";

/** Rows of a system table, or none when it has never been written (not found). */
async function system(sql: string, signal: AbortSignal) {
  try {
    return (await query(sql, [], signal)).rows;
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return [];
    throw e;
  }
}

export function Quality() {
  const expectations = useLoad(
    (signal) =>
      system(
        "SELECT recorded_at, pipeline, model, expectation, action, rows, failed, status FROM system.expectation_results WHERE failed > 0 ORDER BY recorded_at DESC LIMIT 200",
        signal,
      ),
    [],
  );
  const audits = useLoad(
    (signal) =>
      system(
        "SELECT checked_at, pipeline, table_name, audit, audit_type, severity, passed, failed, detail, origin FROM system.audit_results WHERE NOT passed ORDER BY checked_at DESC LIMIT 200",
        signal,
      ),
    [],
  );
  return (
    <section>
      <h1>Quality</h1>
      <h2>Failing expectations</h2>
      <Show loaded={expectations}>{(rows) => <ResultsTable rows={rows} empty="No expectation has failed on a row you may see." label="Failing expectations" />}</Show>
      <h2>Failing audits</h2>
      <Show loaded={audits}>{(rows) => <ResultsTable rows={rows} empty="No audit has failed on a table you may see." label="Failing audits" />}</Show>
      <h2>Quarantine</h2>
      <SuffixTables suffix="__quarantine" label="Quarantine" id="quarantine-table" order="_strata_quarantined_at DESC" />
    </section>
  );
}
