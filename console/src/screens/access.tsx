// Access: the run-time grants (editable by admins, with optimistic locking) beside the
// read-only grants of the configuration file. Row filters and masks are per table, on the
// catalog's table pages.
import { useState } from "preact/hooks";
import { ApiError, type Grant, type Grants, get, send } from "../api";
import { ErrorNote, Show, useLoad } from "../ui";

const PRIVILEGES = ["SELECT", "INSERT", "MODIFY", "MANAGE"];

function Editor({ doc, saved }: { doc: Grants; saved: () => void }) {
  const [grants, setGrants] = useState<Grant[]>(doc.grants);
  const [error, setError] = useState<unknown>(null);
  const [note, setNote] = useState("");
  const set = (i: number, patch: Partial<Grant>) => setGrants(grants.map((g, k) => (k === i ? { ...g, ...patch } : g)));
  const save = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setNote("");
    try {
      await send("PUT", "/api/v1/grants", { grants, expected_version: doc.version });
      setNote("Saved.");
      saved();
    } catch (err) {
      setError(err);
    }
  };
  return (
    <form onSubmit={save} aria-label="Grants">
      {grants.map((g, i) => (
        <fieldset key={i} class="row">
          <legend class="sr-only">Grant {i + 1}</legend>
          <label for={`grant-${i}-role`}>Role</label>
          <input id={`grant-${i}-role`} value={g.role} onInput={(e) => set(i, { role: (e.target as HTMLInputElement).value })} required />
          <label for={`grant-${i}-privilege`}>Privilege</label>
          <select id={`grant-${i}-privilege`} value={g.privilege} onChange={(e) => set(i, { privilege: (e.target as HTMLSelectElement).value })}>
            {PRIVILEGES.map((p) => (
              <option key={p}>{p}</option>
            ))}
          </select>
          <label for={`grant-${i}-on`}>On</label>
          <input id={`grant-${i}-on`} value={g.on} placeholder="*, gold or gold.orders" onInput={(e) => set(i, { on: (e.target as HTMLInputElement).value })} required />
          <button type="button" class="ghost" onClick={() => setGrants(grants.filter((_, k) => k !== i))}>
            Remove grant {i + 1}
          </button>
        </fieldset>
      ))}
      <button type="button" class="ghost" onClick={() => setGrants([...grants, { role: "", privilege: "SELECT", on: "" }])}>
        Add grant
      </button>
      <div>
        <button type="submit" id="save-grants">
          Save grants
        </button>
        <span class="muted small"> version {doc.version}</span>
      </div>
      {note ? <p role="status">{note}</p> : null}
      <ErrorNote error={error} />
    </form>
  );
}

/** Grants as a table; `from` (where each comes from) is a column when any has it. */
export function GrantsTable({ grants, empty }: { grants: (Grant & { from?: string })[]; empty: string }) {
  if (grants.length === 0) return <p class="muted">{empty}</p>;
  const from = grants.some((g) => g.from !== undefined);
  return (
    <table>
      <thead>
        <tr>
          <th scope="col">Role</th>
          <th scope="col">Privilege</th>
          <th scope="col">On</th>
          {from ? <th scope="col">From</th> : null}
        </tr>
      </thead>
      <tbody>
        {grants.map((g, i) => (
          <tr key={i}>
            <td>{g.role}</td>
            <td>{g.privilege}</td>
            <td>{g.on}</td>
            {from ? <td>{g.from}</td> : null}
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function Access({ admin }: { admin: boolean }) {
  const doc = useLoad((signal) => get<Grants>("/api/v1/grants", signal), []);
  return (
    <section>
      <h1>Access</h1>
      <p class="muted">Row filters and column masks are set per table, on its catalog page.</p>
      {doc.error instanceof ApiError && doc.error.status === 403 ? (
        <p class="muted">Grants are shown to admins.</p>
      ) : (
        <Show loaded={doc}>
          {(d) => (
            <>
              <h2>Run-time grants</h2>
              {admin ? <Editor key={d.version} doc={d} saved={doc.reload} /> : null}
              <h2>From the configuration file</h2>
              <GrantsTable grants={d.config_grants} empty="None." />
            </>
          )}
        </Show>
      )}
    </section>
  );
}
