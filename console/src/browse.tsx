// Tables Strata creates beside others (quarantines, dead letters), picked by their name's
// suffix among those the token may read, and browsed in the grid.
import { useState } from "preact/hooks";
import { type TableInfo, get, ident, query } from "./api";
import { ErrorNote, Show, useLoad } from "./ui";
import { Grid } from "./grid";

export function SuffixTables(props: { suffix: string; label: string; id: string; order?: string }) {
  const tables = useLoad((signal) => get<{ tables: TableInfo[] }>("/api/v1/tables", signal), []);
  const [picked, setPicked] = useState("");
  const rows = useLoad(
    async (signal) => {
      if (!picked) return null;
      const [layer, name] = picked.split(".");
      const order = props.order ? ` ORDER BY ${props.order}` : "";
      return query(`SELECT * FROM ${ident(layer)}.${ident(name)}${order} LIMIT 1000`, [], signal);
    },
    [picked],
  );
  return (
    <Show loaded={tables}>
      {({ tables }) => {
        const mine = tables.filter((t) => t.name.endsWith(props.suffix));
        if (mine.length === 0) return <p class="muted">No {props.label.toLowerCase()} table you may read.</p>;
        return (
          <>
            <label for={props.id}>{props.label} table</label>
            <select id={props.id} value={picked} onChange={(e) => setPicked((e.target as HTMLSelectElement).value)}>
              <option value="">Choose…</option>
              {mine.map((t) => (
                <option key={t.full_name} value={t.full_name}>
                  {t.full_name}
                </option>
              ))}
            </select>
            {rows.error ? <ErrorNote error={rows.error} /> : null}
            {rows.data ? (
              <>
                <p class="muted small">{rows.data.rows.length} row(s) (at most 1000), as your token reads them.</p>
                <Grid columns={rows.data.columns} rows={rows.data.rows} label={props.label} />
              </>
            ) : null}
          </>
        );
      }}
    </Show>
  );
}
