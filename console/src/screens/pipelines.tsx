// Pipelines: the list with each one's last status; a pipeline's DAG by topological depth
// coloured by its last run, its runs, and run now / backfill / pause; a model's SQL, kind,
// the source versions it has read (its watermarks) and lag, expectation trend and audits.
import { useState } from "preact/hooks";
import { get, path, send } from "../api";
import { navigate } from "../router";
import { ErrorNote, Link, Show, Status, useLoad, when } from "../ui";

interface Summary {
  name: string;
  version: number;
  models: string[];
  last_status?: string | null;
}
interface SourceRange {
  table: string;
  from_version: number;
  to_version: number;
}
interface ModelRun {
  model: string;
  kind: string;
  status: string;
  rows_out: number;
  commits: number;
  duration_ms: number;
  sources: SourceRange[];
  target_version?: number | null;
  error?: string | null;
  rows_dropped?: number;
  rows_quarantined?: number;
}
export interface RunRecord {
  run_id: string;
  pipeline: string;
  trigger: string;
  requested_by: string;
  status: string;
  queued_at: string;
  started_at?: string | null;
  ended_at?: string | null;
  error?: string | null;
  models: ModelRun[];
}
interface PipelineView {
  name: string;
  version: number;
  deployed_at: string;
  deployed_by: string;
  pipeline: { description?: string | null; run_as: string; trigger?: unknown };
  models: { path: string; sql: string }[];
  dag: { models: string[]; edges: [string, string][]; sources: string[] };
  last_run?: RunRecord | null;
  paused?: { paused_by: string; paused_at: string } | null;
}

/** A model's page: `pipelines/<p>/models/<layer>/<name>` (no dot, which would read as a
 * file extension to the server's fallback). */
export function modelRoute(pipeline: string, model: string): string {
  const [layer, name] = model.split(".");
  return `pipelines/${encodeURIComponent(pipeline)}/models/${encodeURIComponent(layer)}/${encodeURIComponent(name ?? "")}`;
}

export function Pipelines() {
  const list = useLoad((signal) => get<{ pipelines: Summary[] }>("/api/v1/pipelines", signal), []);
  return (
    <section>
      <h1>Pipelines</h1>
      <Show loaded={list}>
        {({ pipelines }) =>
          pipelines.length === 0 ? (
            <p class="muted">
              No pipeline is deployed. Deploy one with <code>strata pipelines deploy DIR</code> or{" "}
              <code>PUT /api/v1/pipelines/&#123;name&#125;</code>.
            </p>
          ) : (
            <table>
              <thead>
                <tr>
                  <th scope="col">Pipeline</th>
                  <th scope="col">Version</th>
                  <th scope="col">Models</th>
                  <th scope="col">Last run</th>
                </tr>
              </thead>
              <tbody>
                {pipelines.map((p) => (
                  <tr key={p.name}>
                    <td>
                      <Link to={`pipelines/${encodeURIComponent(p.name)}`}>{p.name}</Link>
                    </td>
                    <td>{p.version}</td>
                    <td>{p.models.length}</td>
                    <td>
                      <Status value={p.last_status} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )
        }
      </Show>
    </section>
  );
}

/** Each node's depth: the longest path from a node nothing feeds. */
export function depths(nodes: string[], edges: [string, string][]): Map<string, number> {
  const depth = new Map<string, number>(nodes.map((n) => [n, 0]));
  // Relax along the edges as many times as there are nodes (the DAG has no cycles).
  for (let i = 0; i < nodes.length; i++) {
    let moved = false;
    for (const [from, to] of edges) {
      const d = (depth.get(from) ?? 0) + 1;
      if (d > (depth.get(to) ?? 0)) {
        depth.set(to, d);
        moved = true;
      }
    }
    if (!moved) break;
  }
  return depth;
}

function Dag({ view, onPick }: { view: PipelineView; onPick: (m: string) => void }) {
  const nodes = [...view.dag.sources, ...view.dag.models];
  const depth = depths(nodes, view.dag.edges);
  const status = new Map((view.last_run?.models ?? []).map((m) => [m.model, m.status]));
  const columns: string[][] = [];
  for (const n of nodes) (columns[depth.get(n) ?? 0] ??= []).push(n);
  const W = 200;
  const H = 56;
  const pos = new Map<string, { x: number; y: number }>();
  columns.forEach((col, d) => col.forEach((n, i) => pos.set(n, { x: 10 + d * W, y: 10 + i * H })));
  const width = 10 + columns.length * W;
  const height = 10 + Math.max(1, ...columns.map((c) => c.length)) * H;
  return (
    <svg class="dag" role="img" aria-label={`DAG of ${view.name}`} width={width} height={height} viewBox={`0 0 ${width} ${height}`}>
      {view.dag.edges.map(([from, to]) => {
        const a = pos.get(from);
        const b = pos.get(to);
        if (!a || !b) return null;
        const x1 = a.x + 160;
        const y1 = a.y + 18;
        const x2 = b.x;
        const y2 = b.y + 18;
        return <path key={`${from}>${to}`} class="edge" d={`M${x1},${y1} C${x1 + 20},${y1} ${x2 - 20},${y2} ${x2},${y2}`} />;
      })}
      {nodes.map((n) => {
        const p = pos.get(n);
        if (!p) return null;
        const source = view.dag.sources.includes(n);
        const s = source ? "source" : (status.get(n) ?? "never");
        return (
          <g
            key={n}
            class={`node node-${s}`}
            data-node={n}
            data-status={s}
            transform={`translate(${p.x},${p.y})`}
            tabIndex={source ? undefined : 0}
            role={source ? undefined : "link"}
            aria-label={`${n}: ${s}`}
            onClick={() => !source && onPick(n)}
            onKeyDown={(e) => !source && (e.key === "Enter" || e.key === " ") && onPick(n)}
          >
            <rect width="160" height="36" rx="6" />
            <text x="8" y="23">
              {n.length > 22 ? `${n.slice(0, 21)}…` : n}
            </text>
          </g>
        );
      })}
    </svg>
  );
}

export function Runs({ pipeline }: { pipeline: string }) {
  const runs = useLoad((signal) => get<{ runs: RunRecord[] }>(`/api/v1/runs?pipeline=${encodeURIComponent(pipeline)}&limit=20`, signal), [pipeline]);
  return (
    <Show loaded={runs}>
      {({ runs }) =>
        runs.length === 0 ? (
          <p class="muted">No runs yet.</p>
        ) : (
          <table aria-label="Runs">
            <thead>
              <tr>
                <th scope="col">Queued</th>
                <th scope="col">Trigger</th>
                <th scope="col">By</th>
                <th scope="col">Status</th>
                <th scope="col">Models</th>
                <th scope="col">Error</th>
              </tr>
            </thead>
            <tbody>
              {runs.map((r) => (
                <tr key={r.run_id}>
                  <td title={r.run_id}>{when(r.queued_at)}</td>
                  <td>{r.trigger}</td>
                  <td>{r.requested_by}</td>
                  <td>
                    <Status value={r.status} />
                  </td>
                  <td>{r.models.map((m) => `${m.model}: ${m.status}`).join(", ")}</td>
                  <td class="wrap">{r.error ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )
      }
    </Show>
  );
}

export function PipelinePage({ name }: { name: string }) {
  const view = useLoad((signal) => get<PipelineView>(`/api/v1/pipelines/${path(name)}`, signal), [name]);
  const [error, setError] = useState<unknown>(null);
  const [note, setNote] = useState("");
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const [tick, setTick] = useState(0);
  const act = async (what: string, method: string, url: string, body?: unknown) => {
    setError(null);
    setNote("");
    try {
      await send(method, url, body);
      setNote(what);
      view.reload();
      setTick((t) => t + 1);
    } catch (e) {
      setError(e);
    }
  };
  /** Follows a started run until it ends, refreshing the DAG's colours. */
  const runNow = async () => {
    setError(null);
    try {
      const r = await send<RunRecord>("POST", `/api/v1/pipelines/${path(name)}/runs`, {});
      setNote(`Run ${r.run_id} ${r.status}.`);
      let record = r;
      for (let i = 0; i < 600 && (record.status === "queued" || record.status === "running"); i++) {
        await new Promise((ok) => setTimeout(ok, 500));
        record = await get<RunRecord>(`/api/v1/runs/${path(r.run_id)}`);
        setNote(`Run ${r.run_id} ${record.status}.`);
      }
      view.reload();
      setTick((t) => t + 1);
    } catch (e) {
      setError(e);
    }
  };
  return (
    <section>
      <p>
        <Link to="pipelines">Pipelines</Link>
      </p>
      <h1>{name}</h1>
      <Show loaded={view}>
        {(v) => (
          <>
            {v.pipeline.description ? <p>{v.pipeline.description}</p> : null}
            <p class="muted small">
              Version {v.version}, deployed {when(v.deployed_at)} by {v.deployed_by}; runs as {v.pipeline.run_as}.
              {v.paused ? ` Paused by ${v.paused.paused_by} at ${when(v.paused.paused_at)}.` : ""}
            </p>
            <div class="actions">
              <button type="button" id="run-now" onClick={() => void runNow()}>
                Run now
              </button>
              {v.paused ? (
                <button type="button" onClick={() => void act("Resumed.", "POST", `/api/v1/pipelines/${path(name)}/resume`)}>
                  Resume schedule
                </button>
              ) : (
                <button type="button" onClick={() => void act("Paused.", "POST", `/api/v1/pipelines/${path(name)}/pause`)}>
                  Pause schedule
                </button>
              )}
            </div>
            <p role="status" id="pipeline-note">
              {note}
            </p>
            <ErrorNote error={error} />
            <h2>DAG</h2>
            <p class="muted small">By depth from the sources; colours are each model's status in the last run. Select a model for its page.</p>
            <div class="scroll">
              <Dag view={v} onPick={(m) => navigate(modelRoute(name, m))} />
            </div>
            <ul class="inline">
              {v.dag.models.map((m) => (
                <li key={m}>
                  <Link to={modelRoute(name, m)}>{m}</Link>
                </li>
              ))}
            </ul>
            <h2>Backfill</h2>
            <form
              class="row"
              onSubmit={(e) => {
                e.preventDefault();
                void act("Backfill started.", "POST", `/api/v1/pipelines/${path(name)}/backfill`, { from: from || null, to: to || null });
              }}
            >
              <label for="backfill-from">From</label>
              <input id="backfill-from" placeholder="2026-01-01" value={from} onInput={(e) => setFrom((e.target as HTMLInputElement).value)} />
              <label for="backfill-to">To (exclusive)</label>
              <input id="backfill-to" placeholder="2026-02-01" value={to} onInput={(e) => setTo((e.target as HTMLInputElement).value)} />
              <button type="submit">Backfill</button>
            </form>
            <h2>Runs</h2>
            <Runs key={tick} pipeline={name} />
          </>
        )}
      </Show>
    </section>
  );
}

/** A model's header (`/* strata … *\/`) and body. */
function header(sql: string): { kind: string } {
  const m = /kind\s*=\s*"([a-z_0-9]+)"/.exec(sql);
  return { kind: m?.[1] ?? "table" };
}

export function ModelPage({ pipeline, model }: { pipeline: string; model: string }) {
  const view = useLoad((signal) => get<PipelineView>(`/api/v1/pipelines/${path(pipeline)}`, signal), [pipeline]);
  const runs = useLoad(
    (signal) => get<{ runs: RunRecord[] }>(`/api/v1/runs?pipeline=${encodeURIComponent(pipeline)}&limit=50`, signal),
    [pipeline],
  );
  const quality = useLoad(
    (signal) => get<{ expectations: Record<string, unknown>[]; audits: Record<string, unknown>[] }>(`/api/v1/pipelines/${path(pipeline)}/models/${path(model)}/quality`, signal),
    [pipeline, model],
  );
  return (
    <section>
      <p>
        <Link to="pipelines">Pipelines</Link> / <Link to={`pipelines/${encodeURIComponent(pipeline)}`}>{pipeline}</Link>
      </p>
      <h1>{model}</h1>
      <Show loaded={view}>
        {(v) => {
          const file = v.models.find((f) => f.path.replace(/\.sql$/, "").replace("/", ".") === model);
          return file ? (
            <>
              <p>
                Kind: <strong>{header(file.sql).kind}</strong> · <Link to={`lineage/${model.replace(".", "/")}`}>Lineage</Link> ·{" "}
                <Link to={`catalog/${model.replace(".", "/")}`}>Table</Link>
              </p>
              <h2>SQL</h2>
              <pre class="code">{file.sql}</pre>
            </>
          ) : (
            <p class="muted">The pipeline has no model {model}.</p>
          );
        }}
      </Show>
      <h2>Watermarks and lag</h2>
      <Show loaded={runs}>
        {({ runs }) => {
          const mine = runs.flatMap((r) => r.models.filter((m) => m.model === model).map((m) => ({ run: r, m })));
          const last = mine.find((x) => x.m.status === "succeeded");
          return (
            <>
              {last ? (
                <table aria-label="Watermarks">
                  <thead>
                    <tr>
                      <th scope="col">Source</th>
                      <th scope="col">Read up to version</th>
                      <th scope="col">As of</th>
                    </tr>
                  </thead>
                  <tbody>
                    {last.m.sources.map((s) => (
                      <tr key={s.table}>
                        <td>{s.table}</td>
                        <td>{s.to_version}</td>
                        <td>{when(last.run.ended_at)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              ) : (
                <p class="muted">No successful run of this model yet.</p>
              )}
              {last?.run.ended_at ? (
                <p>Lag: {Math.round((Date.now() - new Date(last.run.ended_at).getTime()) / 60000)} min since its last successful run.</p>
              ) : null}
              <h2>Runs of this model</h2>
              <table aria-label="Model runs">
                <thead>
                  <tr>
                    <th scope="col">Queued</th>
                    <th scope="col">Status</th>
                    <th scope="col">Rows out</th>
                    <th scope="col">Dropped</th>
                    <th scope="col">Quarantined</th>
                    <th scope="col">Duration</th>
                    <th scope="col">Error</th>
                  </tr>
                </thead>
                <tbody>
                  {mine.map(({ run, m }) => (
                    <tr key={run.run_id}>
                      <td>{when(run.queued_at)}</td>
                      <td>
                        <Status value={m.status} />
                      </td>
                      <td>{m.rows_out}</td>
                      <td>{m.rows_dropped ?? 0}</td>
                      <td>{m.rows_quarantined ?? 0}</td>
                      <td>{m.duration_ms} ms</td>
                      <td class="wrap">{m.error ?? ""}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </>
          );
        }}
      </Show>
      <h2>Expectations</h2>
      <Show loaded={quality}>
        {(q) => (
          <>
            <Trend rows={q.expectations} />
            <ResultsTable rows={q.expectations} empty="No expectation results recorded." label="Expectation results" />
          </>
        )}
      </Show>
      <h2>Audits</h2>
      <Show loaded={quality}>{(q) => <ResultsTable rows={q.audits} empty="No audit results recorded." label="Audit results" />}</Show>
    </section>
  );
}

export function ResultsTable({ rows, empty, label }: { rows: Record<string, unknown>[]; empty: string; label: string }) {
  if (rows.length === 0) return <p class="muted">{empty}</p>;
  const columns = Object.keys(rows[0]).filter((c) => !/sample/.test(c));
  return (
    <div class="scroll">
      <table aria-label={label}>
        <thead>
          <tr>
            {columns.map((c) => (
              <th scope="col" key={c}>
                {c}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.slice(0, 200).map((r, i) => (
            <tr key={i} class={r.passed === false ? "failed" : ""}>
              {columns.map((c) => (
                <td key={c}>{r[c] === null || r[c] === undefined ? "" : typeof r[c] === "object" ? JSON.stringify(r[c]) : String(r[c])}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/** Each expectation's share of failing rows per run, oldest to newest: one bar per run. */
function Trend({ rows }: { rows: Record<string, unknown>[] }) {
  const by = new Map<string, { at: string; failed: number; rows: number }[]>();
  for (const r of rows) {
    const name = String(r.expectation ?? "");
    const list = by.get(name) ?? [];
    list.push({ at: String(r.recorded_at ?? ""), failed: Number(r.failed ?? 0), rows: Number(r.rows ?? 0) });
    by.set(name, list);
  }
  if (by.size === 0) return null;
  const W = 6;
  const H = 40;
  return (
    <table aria-label="Expectation trend">
      <thead>
        <tr>
          <th scope="col">Expectation</th>
          <th scope="col">Failing share per run (oldest → newest)</th>
          <th scope="col">Last run</th>
        </tr>
      </thead>
      <tbody>
        {[...by.entries()].map(([name, list]) => {
          const runs = [...list].sort((a, b) => a.at.localeCompare(b.at)).slice(-60);
          const last = runs[runs.length - 1];
          const share = (x: { failed: number; rows: number }) => (x.rows > 0 ? x.failed / x.rows : 0);
          return (
            <tr key={name}>
              <td>{name}</td>
              <td>
                <svg class="trend" width={runs.length * W} height={H} role="img" aria-label={`${name}: ${runs.length} runs`}>
                  {runs.map((x, i) => {
                    const h = Math.max(1, Math.round(share(x) * H));
                    return (
                      <rect key={i} x={i * W} y={H - h} width={W - 1} height={h} class={x.failed > 0 ? "bad" : "good"}>
                        <title>
                          {when(x.at)}: {x.failed} of {x.rows} rows failed
                        </title>
                      </rect>
                    );
                  })}
                </svg>
              </td>
              <td>{last ? `${last.failed} of ${last.rows} (${(100 * share(last)).toFixed(2)}%)` : ""}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}
