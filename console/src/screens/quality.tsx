// Quality: failing expectations and audits across pipelines (from system.expectation_results
// and system.audit_results, read through the policy-enforcing catalog like any table), and
// a browser of the quarantine tables the token may read.
import { useState } from "preact/hooks";
import { ApiError, type TableInfo, get, ident, query } from "../api";
import { ErrorNote, Show, useLoad } from "../ui";
import { Grid } from "../grid";
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

function Quarantine() {
  const tables = useLoad((signal) => get<{ tables: TableInfo[] }>("/api/v1/tables", signal), []);
  const [picked, setPicked] = useState("");
  const rows = useLoad(
    async (signal) => {
      if (!picked) return null;
      const [layer, name] = picked.split(".");
      return query(`SELECT * FROM ${ident(layer)}.${ident(name)} ORDER BY _strata_quarantined_at DESC LIMIT 1000`, [], signal);
    },
    [picked],
  );
  return (
    <Show loaded={tables}>
      {({ tables }) => {
        const q = tables.filter((t) => t.name.endsWith("__quarantine"));
        if (q.length === 0) return <p class="muted">No quarantine table you may read.</p>;
        return (
          <>
            <label for="quarantine-table">Quarantine table</label>
            <select id="quarantine-table" value={picked} onChange={(e) => setPicked((e.target as HTMLSelectElement).value)}>
              <option value="">Choose…</option>
              {q.map((t) => (
                <option key={t.full_name} value={t.full_name}>
                  {t.full_name}
                </option>
              ))}
            </select>
            {rows.error ? <ErrorNote error={rows.error} /> : null}
            {rows.data ? (
              <>
                <p class="muted small">{rows.data.rows.length} row(s), newest first (at most 1000).</p>
                <Grid columns={rows.data.columns} rows={rows.data.rows} label="Quarantined rows" />
              </>
            ) : null}
          </>
        );
      }}
    </Show>
  );
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
      <Quarantine />
    </section>
  );
}
