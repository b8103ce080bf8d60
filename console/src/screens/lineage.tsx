// Lineage: a table's graph (upstream to the left, downstream to the right, by hops), and a
// column's, with direct and indirect edges drawn apart; nodes the token may not see are
// only counted.
import { useState } from "preact/hooks";
import { type TableInfo, get, path } from "../api";
import { navigate } from "../router";
import { Show, useLoad, when } from "../ui";

interface TableNode {
  id: string;
  table: string;
  column?: string | null;
  description?: string | null;
  depth: number;
}
type Node = TableNode | { hidden: number };
interface Transformation {
  type?: string;
  subtype?: string;
}
interface Edge {
  from: string;
  to: string;
  jobs: string[];
  transformations?: Transformation[];
  version: number;
  observed_at?: string | null;
}
interface Graph {
  nodes: Node[];
  edges: Edge[];
  hidden_edges: number;
}

function visible(n: Node): n is TableNode {
  return (n as TableNode).id !== undefined;
}

/** Upstream nodes (those with a path to the start) get a negative column. */
function layout(start: string, nodes: TableNode[], edges: Edge[]): Map<string, number> {
  const up = new Set<string>([start]);
  for (let moved = true; moved; ) {
    moved = false;
    for (const e of edges) {
      if (up.has(e.to) && !up.has(e.from)) {
        up.add(e.from);
        moved = true;
      }
    }
  }
  return new Map(nodes.map((n) => [n.id, n.id === start ? 0 : up.has(n.id) ? -n.depth : n.depth]));
}

function Drawing({ graph, start, label }: { graph: Graph; start: string; label: string }) {
  const nodes = graph.nodes.filter(visible);
  const hidden = graph.nodes.filter((n) => !visible(n)).reduce((a, n) => a + (n as { hidden: number }).hidden, 0);
  const column = layout(start, nodes, graph.edges);
  const min = Math.min(0, ...column.values());
  const max = Math.max(0, ...column.values());
  const W = 230;
  const H = 56;
  const rows = new Map<number, number>();
  const pos = new Map<string, { x: number; y: number }>();
  for (const n of nodes) {
    const c = column.get(n.id) ?? 0;
    const r = rows.get(c) ?? 0;
    rows.set(c, r + 1);
    pos.set(n.id, { x: 10 + (c - min) * W, y: 10 + r * H });
  }
  const width = 10 + (max - min + 1) * W;
  const height = 10 + Math.max(1, ...rows.values()) * H;
  return (
    <>
      <div class="scroll">
        <svg class="dag" role="img" aria-label={label} width={width} height={height} viewBox={`0 0 ${width} ${height}`}>
          {graph.edges.map((e) => {
            const a = pos.get(e.from);
            const b = pos.get(e.to);
            if (!a || !b) return null;
            const indirect = (e.transformations ?? []).length > 0 && (e.transformations ?? []).every((t) => t.type === "INDIRECT");
            const x1 = a.x + 190;
            const y1 = a.y + 18;
            const x2 = b.x;
            const y2 = b.y + 18;
            return (
              <path
                key={`${e.from}>${e.to}`}
                class={indirect ? "edge indirect" : "edge"}
                data-edge={`${e.from}>${e.to}`}
                d={`M${x1},${y1} C${x1 + 20},${y1} ${x2 - 20},${y2} ${x2},${y2}`}
              >
                <title>
                  {e.from} → {e.to}: {e.jobs.join(", ")} (v{e.version}
                  {e.observed_at ? `, ${when(e.observed_at)}` : ""}){indirect ? " — indirect" : ""}
                </title>
              </path>
            );
          })}
          {nodes.map((n) => {
            const p = pos.get(n.id);
            if (!p) return null;
            return (
              <g
                key={n.id}
                class={`node ${n.id === start ? "node-start" : ""}`}
                data-node={n.id}
                transform={`translate(${p.x},${p.y})`}
                tabIndex={0}
                role="link"
                aria-label={`${n.id}${n.description ? `: ${n.description}` : ""}`}
                onClick={() => navigate(`lineage/${n.table.replace(".", "/")}`)}
                onKeyDown={(e) => (e.key === "Enter" || e.key === " ") && navigate(`lineage/${n.table.replace(".", "/")}`)}
              >
                <rect width="190" height="36" rx="6" />
                <text x="8" y="23">
                  {n.id.length > 26 ? `${n.id.slice(0, 25)}…` : n.id}
                </text>
              </g>
            );
          })}
        </svg>
      </div>
      <p class="muted small" id="lineage-hidden">
        {hidden > 0 || graph.hidden_edges > 0
          ? `${hidden} node(s) and ${graph.hidden_edges} edge(s) you may not see are left out.`
          : "Nothing is hidden from you in this graph."}{" "}
        Solid edges are direct (values flow), dashed ones indirect (joins, filters).
      </p>
      <table aria-label="Edges">
        <thead>
          <tr>
            <th scope="col">From</th>
            <th scope="col">To</th>
            <th scope="col">Jobs</th>
            <th scope="col">Version</th>
          </tr>
        </thead>
        <tbody>
          {graph.edges.map((e) => (
            <tr key={`${e.from}>${e.to}`}>
              <td>{e.from}</td>
              <td>{e.to}</td>
              <td>{e.jobs.join(", ")}</td>
              <td>{e.version}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

export function Lineage({ table }: { table: string | null }) {
  const tables = useLoad((signal) => get<{ tables: TableInfo[] }>("/api/v1/tables", signal), []);
  const [depth, setDepth] = useState(3);
  const [column, setColumn] = useState("");
  const graph = useLoad(
    async (signal) => {
      if (!table) return null;
      const [layer, name] = table.split(".");
      const url = column
        ? `/api/v1/lineage/columns/${path(layer, name, column)}?depth=${depth}`
        : `/api/v1/lineage/tables/${path(layer, name)}?depth=${depth}`;
      return get<Graph>(url, signal);
    },
    [table, depth, column],
  );
  const info = tables.data?.tables.find((t) => t.full_name === table);
  return (
    <section>
      <h1>Lineage</h1>
      <div class="row">
        <label for="lineage-table">Table</label>
        <select
          id="lineage-table"
          value={table ?? ""}
          onChange={(e) => {
            const v = (e.target as HTMLSelectElement).value;
            setColumn("");
            if (v) navigate(`lineage/${v.replace(".", "/")}`);
          }}
        >
          <option value="">Choose…</option>
          {(tables.data?.tables ?? []).map((t) => (
            <option key={t.full_name} value={t.full_name}>
              {t.full_name}
            </option>
          ))}
        </select>
        <label for="lineage-column">Column</label>
        <select id="lineage-column" value={column} onChange={(e) => setColumn((e.target as HTMLSelectElement).value)} disabled={!info}>
          <option value="">Whole table</option>
          {(info?.columns ?? []).map((c) => (
            <option key={c.name} value={c.name}>
              {c.name}
            </option>
          ))}
        </select>
        <label for="lineage-depth">Depth</label>
        <input id="lineage-depth" type="number" min={1} max={10} value={depth} onInput={(e) => setDepth(Number((e.target as HTMLInputElement).value) || 1)} />
      </div>
      {table ? (
        <Show loaded={graph}>
          {(g) => (g ? <Drawing graph={g} start={column ? `${table}.${column}` : table} label={`Lineage of ${table}${column ? `.${column}` : ""}`} /> : null)}
        </Show>
      ) : (
        <p class="muted">Choose a table to see where its data comes from and where it goes.</p>
      )}
    </section>
  );
}
