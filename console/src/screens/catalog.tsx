// Catalog: layers → the tables the token may see; a table's schema, description, owner,
// partitioning and properties, its history (MANAGE holders), a masked 100-row preview, and
// for admins its policies (editable) and the grants that reach it.
import { useState } from "preact/hooks";
import { ApiError, type Grants, type Policies, type TableInfo, get, ident, path, query, send } from "../api";
import { ErrorNote, Link, Show, bytes, useLoad, when } from "../ui";
import { Grid } from "../grid";
import { GrantsTable } from "./access";

const LAYERS = ["bronze", "silver", "gold", "system"];

export function Catalog() {
  const tables = useLoad((signal) => get<{ tables: TableInfo[] }>("/api/v1/tables", signal), []);
  const [filter, setFilter] = useState("");
  return (
    <section>
      <h1>Catalog</h1>
      <label for="table-filter">Filter tables</label>
      <input
        id="table-filter"
        type="search"
        value={filter}
        onInput={(e) => setFilter((e.target as HTMLInputElement).value)}
        placeholder="name or description"
      />
      <Show loaded={tables}>
        {({ tables }) => {
          const shown = tables.filter(
            (t) => t.full_name.includes(filter) || (t.description ?? "").toLowerCase().includes(filter.toLowerCase()),
          );
          return (
            <>
              {LAYERS.map((layer) => {
                const mine = shown.filter((t) => t.layer === layer);
                if (mine.length === 0) return null;
                return (
                  <div key={layer} class="layer">
                    <h2>{layer}</h2>
                    <ul class="tables" aria-label={`${layer} tables`}>
                      {mine.map((t) => (
                        <li key={t.full_name} data-table={t.full_name}>
                          <Link to={`catalog/${t.layer}/${t.name}`}>{t.full_name}</Link>
                          <span class="muted small">
                            {t.version !== undefined ? ` v${t.version} · ${t.file_count ?? 0} files · ${bytes(t.size_bytes ?? 0)}` : ""}
                            {t.description ? ` · ${t.description}` : ""}
                          </span>
                        </li>
                      ))}
                    </ul>
                  </div>
                );
              })}
              {shown.length === 0 ? <p class="muted">No table you may see matches.</p> : null}
            </>
          );
        }}
      </Show>
    </section>
  );
}

interface HistoryEntry {
  version: number;
  timestamp: string | null;
  operation: string | null;
  principal?: string | null;
  strata_operation?: string | null;
  operation_metrics?: Record<string, unknown> | null;
}

function History({ layer, name }: { layer: string; name: string }) {
  const history = useLoad(
    (signal) => get<{ history: HistoryEntry[] }>(`/api/v1/tables/${path(layer, name)}/history`, signal),
    [layer, name],
  );
  if (history.error instanceof ApiError && history.error.status === 403) {
    return <p class="muted">The table's history is shown to holders of MANAGE on it.</p>;
  }
  return (
    <Show loaded={history}>
      {({ history }) => (
        <table>
          <thead>
            <tr>
              <th scope="col">Version</th>
              <th scope="col">When</th>
              <th scope="col">Operation</th>
              <th scope="col">By</th>
              <th scope="col">Rows added</th>
            </tr>
          </thead>
          <tbody>
            {history.map((h) => (
              <tr key={h.version}>
                <td>{h.version}</td>
                <td>{when(h.timestamp)}</td>
                <td>{h.strata_operation ?? h.operation}</td>
                <td>{h.principal ?? ""}</td>
                <td>{String(h.operation_metrics?.num_added_rows ?? "")}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Show>
  );
}

function Preview({ table }: { table: TableInfo }) {
  const preview = useLoad(
    (signal) => query(`SELECT * FROM ${ident(table.layer)}.${ident(table.name)} LIMIT 100`, [], signal),
    [table.full_name, table.version],
  );
  return (
    <Show loaded={preview}>
      {(r) => (
        <>
          <p class="muted small">
            {r.rows.length} row(s), as your token reads them (row filters and masks applied).
          </p>
          <Grid columns={r.columns.length ? r.columns : table.columns.map((c) => c.name)} rows={r.rows} height={320} label="Preview" />
        </>
      )}
    </Show>
  );
}

/** Comma-separated text ↔ a list. */
function list(s: string): string[] {
  return s
    .split(",")
    .map((x) => x.trim())
    .filter((x) => x !== "");
}

function PolicyEditor({ table }: { table: TableInfo }) {
  const url = `/api/v1/tables/${path(table.layer, table.name)}/policies`;
  const loaded = useLoad((signal) => get<Policies>(url, signal), [url]);
  // Kept here: the form is rebuilt from the saved document (a new version) after a save.
  const [note, setNote] = useState("");
  return (
    <>
      <Show loaded={loaded}>
        {(doc) => (
          <PolicyForm
            key={doc.version}
            doc={doc}
            url={url}
            table={table}
            saved={() => {
              setNote("Saved. Queries from now on read through the new policies.");
              loaded.reload();
            }}
            editing={() => setNote("")}
          />
        )}
      </Show>
      {note ? (
        <p role="status" id="policies-note">
          {note}
        </p>
      ) : null}
    </>
  );
}

function PolicyForm(props: { doc: Policies; url: string; table: TableInfo; saved: () => void; editing: () => void }) {
  const [filters, setFilters] = useState(props.doc.row_filters.map((f) => ({ roles: f.roles.join(", "), predicate: f.predicate })));
  const [masks, setMasks] = useState(
    props.doc.column_masks.map((m) => ({ column: m.column, mask: m.mask, exempt: (m.exempt_roles ?? []).join(", ") })),
  );
  const [error, setError] = useState<unknown>(null);
  const save = async (e: Event) => {
    e.preventDefault();
    setError(null);
    props.editing();
    try {
      await send("PUT", props.url, {
        expected_version: props.doc.version,
        row_filters: filters.map((f) => ({ roles: list(f.roles), predicate: f.predicate })),
        column_masks: masks.map((m) => ({ column: m.column, mask: m.mask, exempt_roles: list(m.exempt) })),
      });
      props.saved();
    } catch (err) {
      setError(err);
    }
  };
  const set = <T,>(xs: T[], i: number, patch: Partial<T>) => xs.map((x, k) => (k === i ? { ...x, ...patch } : x));
  return (
    <form onSubmit={save} class="policies" aria-label="Policies">
      <h3>Row filters</h3>
      <p class="muted small">
        A principal sees the rows where a filter of one of its roles holds (OR of them); a table with filters and none
        for its roles shows no rows. Predicates may call <code>current_user()</code>, <code>has_role('r')</code>,{" "}
        <code>current_claim('k')</code>.
      </p>
      {filters.map((f, i) => (
        <fieldset key={i} class="row">
          <legend class="sr-only">Row filter {i + 1}</legend>
          <label for={`filter-${i}-roles`}>Roles</label>
          <input id={`filter-${i}-roles`} value={f.roles} onInput={(e) => setFilters(set(filters, i, { roles: (e.target as HTMLInputElement).value }))} />
          <label for={`filter-${i}-predicate`}>Predicate</label>
          <input
            id={`filter-${i}-predicate`}
            class="wide"
            value={f.predicate}
            onInput={(e) => setFilters(set(filters, i, { predicate: (e.target as HTMLInputElement).value }))}
          />
          <button type="button" class="ghost" onClick={() => setFilters(filters.filter((_, k) => k !== i))}>
            Remove filter {i + 1}
          </button>
        </fieldset>
      ))}
      <button type="button" class="ghost" onClick={() => setFilters([...filters, { roles: "", predicate: "" }])}>
        Add row filter
      </button>
      <h3>Column masks</h3>
      {masks.map((m, i) => (
        <fieldset key={i} class="row">
          <legend class="sr-only">Column mask {i + 1}</legend>
          <label for={`mask-${i}-column`}>Column</label>
          <select id={`mask-${i}-column`} value={m.column} onChange={(e) => setMasks(set(masks, i, { column: (e.target as HTMLSelectElement).value }))}>
            {props.table.columns.map((c) => (
              <option key={c.name} value={c.name}>
                {c.name}
              </option>
            ))}
          </select>
          <label for={`mask-${i}-mask`}>Mask</label>
          <input id={`mask-${i}-mask`} class="wide" value={m.mask} onInput={(e) => setMasks(set(masks, i, { mask: (e.target as HTMLInputElement).value }))} />
          <label for={`mask-${i}-exempt`}>Exempt roles</label>
          <input id={`mask-${i}-exempt`} value={m.exempt} onInput={(e) => setMasks(set(masks, i, { exempt: (e.target as HTMLInputElement).value }))} />
          <button type="button" class="ghost" onClick={() => setMasks(masks.filter((_, k) => k !== i))}>
            Remove mask {i + 1}
          </button>
        </fieldset>
      ))}
      <button
        type="button"
        class="ghost"
        onClick={() => setMasks([...masks, { column: props.table.columns[0]?.name ?? "", mask: "NULL", exempt: "" }])}
      >
        Add column mask
      </button>
      <div>
        <button type="submit" id="save-policies">
          Save policies
        </button>
        <span class="muted small"> version {props.doc.version}</span>
      </div>
      <ErrorNote error={error} />
    </form>
  );
}

function TableGrants({ table }: { table: TableInfo }) {
  const grants = useLoad((signal) => get<Grants>("/api/v1/grants", signal), []);
  return (
    <Show loaded={grants}>
      {(g) => {
        const reaches = (on: string) => on === "*" || on === table.layer || on === table.full_name;
        const all = [...g.grants.map((x) => ({ ...x, from: "run time" })), ...g.config_grants.map((x) => ({ ...x, from: "config file" }))].filter((x) =>
          reaches(x.on),
        );
        return <GrantsTable grants={all} empty="No grant reaches this table." />;
      }}
    </Show>
  );
}

export function TablePage({ layer, name, admin }: { layer: string; name: string; admin: boolean }) {
  const info = useLoad((signal) => get<TableInfo>(`/api/v1/tables/${path(layer, name)}`, signal), [layer, name]);
  return (
    <section>
      <p>
        <Link to="catalog">Catalog</Link> / {layer}
      </p>
      <h1>
        {layer}.{name}
      </h1>
      <Show loaded={info}>
        {(t) => (
          <>
            {t.description ? <p>{t.description}</p> : <p class="muted">No description.</p>}
            <dl class="facts">
              <dt>Owner</dt>
              <dd>{t.owner ?? "—"}</dd>
              <dt>Created</dt>
              <dd>{when(t.created_at)}</dd>
              {t.version !== undefined ? (
                <>
                  <dt>Version</dt>
                  <dd>{t.version}</dd>
                  <dt>Storage</dt>
                  <dd>
                    {t.file_count ?? 0} files, {bytes(t.size_bytes ?? 0)}
                  </dd>
                </>
              ) : null}
              <dt>Partitioned by</dt>
              <dd>{t.partition_columns.length ? t.partition_columns.join(", ") : "—"}</dd>
            </dl>
            <p>
              <Link to={`lineage/${t.layer}/${t.name}`}>Lineage</Link>
            </p>
            <h2>Schema</h2>
            <table aria-label="Schema">
              <thead>
                <tr>
                  <th scope="col">Column</th>
                  <th scope="col">Type</th>
                  <th scope="col">Nullable</th>
                  <th scope="col">Comment</th>
                </tr>
              </thead>
              <tbody>
                {t.columns.map((c) => (
                  <tr key={c.name}>
                    <td>
                      <code>{c.name}</code>
                    </td>
                    <td>{c.type}</td>
                    <td>{c.nullable ? "yes" : "no"}</td>
                    <td>{c.description ?? c.metadata?.comment ?? ""}</td>
                  </tr>
                ))}
              </tbody>
            </table>
            <h2>Properties</h2>
            {Object.keys(t.properties).length === 0 ? (
              <p class="muted">None.</p>
            ) : (
              <dl class="facts">
                {Object.entries(t.properties).map(([k, v]) => (
                  <>
                    <dt key={`k${k}`}>{k}</dt>
                    <dd key={`v${k}`}>{v}</dd>
                  </>
                ))}
              </dl>
            )}
            <h2>Preview</h2>
            <Preview table={t} />
            <h2>History</h2>
            <History layer={layer} name={name} />
            {admin && t.layer !== "system" ? (
              <>
                <h2>Policies</h2>
                <PolicyEditor table={t} />
                <h2>Grants</h2>
                <TableGrants table={t} />
                <p class="muted small">
                  Edit grants on the <Link to="access">Access</Link> screen.
                </p>
              </>
            ) : null}
          </>
        )}
      </Show>
    </section>
  );
}
