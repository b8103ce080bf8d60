// Overview: health, readiness, version, the server's load and caches (from /metrics,
// operator or admin), the scheduler's leader, failing runs and stale sources.
import { ApiError, type TableInfo, get, open, request } from "../api";
import { ErrorNote, Link, Show, Status, bytes, useLoad, when } from "../ui";

type Samples = Map<string, { labels: Record<string, string>; value: number }[]>;

/** OpenMetrics text → samples by metric name. */
export function parseMetrics(text: string): Samples {
  const out: Samples = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const list = out.get(m[1]) ?? [];
    list.push({ labels, value: Number(m[4]) });
    out.set(m[1], list);
  }
  return out;
}

function sum(s: Samples, name: string): number {
  return (s.get(name) ?? []).reduce((a, x) => a + x.value, 0);
}

function Card({ label, value, note }: { label: string; value: string; note?: string }) {
  return (
    <div class="card">
      <div class="card-label">{label}</div>
      <div class="card-value">{value}</div>
      {note ? <div class="muted small">{note}</div> : null}
    </div>
  );
}

function Metrics() {
  const loaded = useLoad(
    async (signal) => parseMetrics(await (await request("GET", "/metrics", undefined, { signal, accept: "text/plain" })).text()),
    [],
  );
  if (loaded.error) {
    return (
      <p class="muted">
        Load, cache and commit figures come from <code>/metrics</code>, which needs the operator or admin role.
      </p>
    );
  }
  return (
    <Show loaded={loaded}>
      {(s) => {
        const hits = sum(s, "strata_cache_hits_total");
        const misses = sum(s, "strata_cache_misses_total");
        const ratio = hits + misses > 0 ? `${((100 * hits) / (hits + misses)).toFixed(1)}%` : "—";
        const stale = (s.get("strata_source_staleness_seconds") ?? []).sort((a, b) => b.value - a.value);
        return (
          <>
            <div class="cards">
              <Card label="Queries running" value={String(sum(s, "strata_queries_running"))} />
              <Card label="Queries queued" value={String(sum(s, "strata_queries_queued"))} />
              <Card label="Cache hit ratio" value={ratio} note={`${hits} hits, ${misses} misses`} />
              <Card
                label="Query memory pool"
                value={bytes(sum(s, "strata_memory_pool_reserved_bytes"))}
                note={`of ${bytes(sum(s, "strata_memory_pool_limit_bytes"))}`}
              />
              <Card
                label="Pipeline memory pool"
                value={bytes(sum(s, "strata_pipeline_memory_pool_reserved_bytes"))}
                note={`of ${bytes(sum(s, "strata_pipeline_memory_pool_limit_bytes"))}`}
              />
              <Card label="Commits" value={String(sum(s, "strata_commits_total"))} />
              <Card label="Commit conflicts" value={String(sum(s, "strata_commit_conflicts_total"))} />
              <Card label="Rows served" value={String(sum(s, "strata_rows_served_total"))} />
            </div>
            <h2>Source freshness</h2>
            {stale.length === 0 ? (
              <p class="muted">No pipeline has checked a source's freshness yet.</p>
            ) : (
              <table>
                <caption class="sr-only">Sources by time since their last commit</caption>
                <thead>
                  <tr>
                    <th scope="col">Source</th>
                    <th scope="col">Since its last commit</th>
                  </tr>
                </thead>
                <tbody>
                  {stale.slice(0, 20).map((x) => (
                    <tr key={JSON.stringify(x.labels)}>
                      <td>{x.labels.table ?? JSON.stringify(x.labels)}</td>
                      <td>{duration(x.value)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </>
        );
      }}
    </Show>
  );
}

export function duration(secs: number): string {
  if (!Number.isFinite(secs)) return "—";
  if (secs < 120) return `${Math.round(secs)} s`;
  if (secs < 7200) return `${Math.round(secs / 60)} min`;
  if (secs < 172800) return `${(secs / 3600).toFixed(1)} h`;
  return `${(secs / 86400).toFixed(1)} d`;
}

interface Health {
  status: string;
  version: string;
  uptime_secs: number;
}
interface Ready {
  status: string;
  checks: { object_store: string };
}
interface Scheduler {
  enabled: boolean;
  is_leader: boolean;
  leader?: { id: string; address: string } | null;
  replica: { id: string; address: string };
  replicas: { id: string }[];
  epoch: number;
}
interface Run {
  run_id: string;
  pipeline: string;
  status: string;
  queued_at: string;
  ended_at?: string | null;
  error?: string | null;
}

export function Overview() {
  const health = useLoad(async () => {
    const [h, r] = await Promise.all([open<Health>("/healthz"), open<Ready>("/readyz")]);
    return { health: h.body, ready: r.body, readyStatus: r.status };
  }, []);
  const tables = useLoad((signal) => get<{ tables: TableInfo[] }>("/api/v1/tables", signal), []);
  const scheduler = useLoad((signal) => get<Scheduler>("/api/v1/scheduler", signal), []);
  const failing = useLoad((signal) => get<{ runs: Run[] }>("/api/v1/runs?status=failed&limit=10", signal), []);
  return (
    <section>
      <h1>Overview</h1>
      <Show loaded={health}>
        {({ health: h, ready: r }) => (
          <div class="cards">
            <Card label="Health" value={h?.status ?? "unreachable"} note={h ? `up ${duration(h.uptime_secs)}` : undefined} />
            <Card label="Readiness" value={r?.status ?? "unknown"} note={r ? `object store: ${r.checks.object_store}` : undefined} />
            <Card label="Version" value={h?.version ?? "—"} />
          </div>
        )}
      </Show>
      <h2>Storage</h2>
      <Show loaded={tables}>
        {({ tables: ts }) => {
          const sized = ts.filter((t) => t.size_bytes !== undefined);
          const layers = ["bronze", "silver", "gold"].map((l) => `${ts.filter((t) => t.layer === l).length} ${l}`).join(", ");
          return (
            <div class="cards">
              <Card label="Tables you may read" value={String(ts.length)} note={layers} />
              <Card
                label="Their size"
                value={sized.length ? bytes(sized.reduce((a, t) => a + (t.size_bytes ?? 0), 0)) : "—"}
                note={sized.length < ts.length ? `${sized.length} of ${ts.length} tables show their storage to you` : `${sized.reduce((a, t) => a + (t.file_count ?? 0), 0)} files`}
              />
            </div>
          );
        }}
      </Show>
      <h2>Load</h2>
      <Metrics />
      <h2>Scheduler</h2>
      {scheduler.error instanceof ApiError && scheduler.error.status === 403 ? (
        <p class="muted">The scheduler's replicas and leader are shown to admins.</p>
      ) : (
        <Show loaded={scheduler}>
        {(s) => (
          <p>
            {s.enabled ? "Enabled" : "Disabled on this replica"}; leader:{" "}
            <strong>{s.leader ? `${s.leader.id.slice(0, 8)} (${s.leader.address})` : "none"}</strong>
            {s.is_leader ? " — this replica" : ""}; {s.replicas.length} replica(s) seen; lease epoch {s.epoch}.
          </p>
        )}
      </Show>
      )}
      <h2>Failing runs</h2>
      {failing.error ? (
        <ErrorNote error={failing.error} />
      ) : (
        <Show loaded={failing}>
          {(f) =>
            f.runs.length === 0 ? (
              <p class="muted">No failed runs.</p>
            ) : (
              <table>
                <thead>
                  <tr>
                    <th scope="col">Pipeline</th>
                    <th scope="col">Status</th>
                    <th scope="col">Ended</th>
                    <th scope="col">Error</th>
                  </tr>
                </thead>
                <tbody>
                  {f.runs.map((r) => (
                    <tr key={r.run_id}>
                      <td>
                        <Link to={`pipelines/${encodeURIComponent(r.pipeline)}`}>{r.pipeline}</Link>
                      </td>
                      <td>
                        <Status value={r.status} />
                      </td>
                      <td>{when(r.ended_at ?? r.queued_at)}</td>
                      <td class="wrap">{r.error ?? ""}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )
          }
        </Show>
      )}
    </section>
  );
}
