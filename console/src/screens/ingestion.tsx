// Ingestion: pull connectors (state, last run, cursor; run now and resume), webhooks, and
// the dead-letter tables the token may read.
import { useState } from "preact/hooks";
import { ApiError, get, path, send } from "../api";
import { SuffixTables } from "../browse";
import { ErrorNote, Show, Status, useLoad, when } from "../ui";

interface ConnectorView {
  name: string;
  version: number;
  spec: { table: string; run_as: string; mode?: string; schedule?: string | null };
  state: string;
  status: {
    last_run?: { status: string; trigger: string; started_at: string; ended_at?: string | null; pages: number; records: number; rows: number; dead_letters: number; error?: string | null } | null;
    last_success?: string | null;
    consecutive_failures: number;
  };
  checkpoint?: { cursor?: string | null } | null;
}
interface Webhook {
  name: string;
  version: number;
  table: string;
  scheme?: string;
  updated_at: string;
  updated_by: string;
}

function AdminOnly({ error, what }: { error: unknown; what: string }) {
  if (error instanceof ApiError && error.status === 403) return <p class="muted">{what} are shown to admins.</p>;
  return <ErrorNote error={error} />;
}

function Connectors() {
  const list = useLoad((signal) => get<ConnectorView[]>("/api/v1/connectors", signal), []);
  const [error, setError] = useState<unknown>(null);
  const act = async (url: string) => {
    setError(null);
    try {
      await send("POST", url);
      list.reload();
    } catch (e) {
      setError(e);
    }
  };
  if (list.error) return <AdminOnly error={list.error} what="Connectors" />;
  return (
    <Show loaded={list}>
      {(cs) =>
        cs.length === 0 ? (
          <p class="muted">No connector is deployed (<code>strata connectors deploy FILE</code>).</p>
        ) : (
          <>
            <ErrorNote error={error} />
            <table aria-label="Connectors">
              <thead>
                <tr>
                  <th scope="col">Connector</th>
                  <th scope="col">Table</th>
                  <th scope="col">Schedule</th>
                  <th scope="col">State</th>
                  <th scope="col">Last run</th>
                  <th scope="col">Cursor</th>
                  <th scope="col">Actions</th>
                </tr>
              </thead>
              <tbody>
                {cs.map((c) => {
                  const r = c.status.last_run;
                  return (
                    <tr key={c.name}>
                      <td>{c.name}</td>
                      <td>{c.spec.table}</td>
                      <td>{c.spec.schedule ?? "on request"}</td>
                      <td>
                        <Status value={c.state} />
                      </td>
                      <td>
                        {r ? (
                          <>
                            <Status value={r.status} /> {when(r.started_at)}: {r.pages} pages, {r.rows} rows, {r.dead_letters} dead letters
                            {r.error ? <div class="error small">{r.error}</div> : null}
                          </>
                        ) : (
                          "never"
                        )}
                      </td>
                      <td>
                        <code>{c.checkpoint?.cursor ?? "—"}</code>
                      </td>
                      <td>
                        <button type="button" class="ghost" onClick={() => void act(`/api/v1/connectors/${path(c.name)}/runs`)}>
                          Run now
                        </button>
                        {c.state === "paused" ? (
                          <button type="button" class="ghost" onClick={() => void act(`/api/v1/connectors/${path(c.name)}/resume`)}>
                            Resume
                          </button>
                        ) : null}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </>
        )
      }
    </Show>
  );
}

function Webhooks() {
  const list = useLoad((signal) => get<Webhook[]>("/api/v1/webhooks", signal), []);
  if (list.error) return <AdminOnly error={list.error} what="Webhooks" />;
  return (
    <Show loaded={list}>
      {(ws) =>
        ws.length === 0 ? (
          <p class="muted">No webhook is defined.</p>
        ) : (
          <table aria-label="Webhooks">
            <thead>
              <tr>
                <th scope="col">Webhook</th>
                <th scope="col">Receiving URL</th>
                <th scope="col">Table</th>
                <th scope="col">Version</th>
                <th scope="col">Updated</th>
              </tr>
            </thead>
            <tbody>
              {ws.map((w) => (
                <tr key={w.name}>
                  <td>{w.name}</td>
                  <td>
                    <code>/api/v1/ingest/webhooks/{w.name}</code>
                  </td>
                  <td>{w.table}</td>
                  <td>{w.version}</td>
                  <td>
                    {when(w.updated_at)} by {w.updated_by}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )
      }
    </Show>
  );
}

export function Ingestion({ admin }: { admin: boolean }) {
  return (
    <section>
      <h1>Ingestion</h1>
      {admin ? null : <p class="muted">Connector and webhook definitions are admin-only; dead letters follow your grants.</p>}
      <h2>Connectors</h2>
      <Connectors />
      <h2>Webhooks</h2>
      <Webhooks />
      <h2>Dead letters</h2>
      <SuffixTables suffix="__dead_letter" label="Dead letters" id="dead-letter-table" />
    </section>
  );
}
