// A result grid that renders only the rows in view (plus a margin), so a 100,000-row
// result scrolls without building 100,000 rows of DOM.
import { useEffect, useRef, useState } from "preact/hooks";
import type { Row } from "./api";

const ROW = 28;
const OVERSCAN = 10;

export function cell(v: unknown): string {
  if (v === null || v === undefined) return "NULL";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function Grid(props: { columns: string[]; rows: Row[]; height?: number; label: string }) {
  const { columns, rows } = props;
  const height = props.height ?? 480;
  const box = useRef<HTMLDivElement>(null);
  const [top, setTop] = useState(0);
  useEffect(() => {
    setTop(0);
    if (box.current) box.current.scrollTop = 0;
  }, [rows]);
  const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
  const last = Math.min(rows.length, Math.ceil((top + height) / ROW) + OVERSCAN);
  const template = `repeat(${Math.max(1, columns.length)}, minmax(8rem, 1fr))`;
  const visible = [];
  for (let i = first; i < last; i++) {
    const r = rows[i];
    visible.push(
      <div role="row" aria-rowindex={i + 2} class="grid-row" style={{ transform: `translateY(${i * ROW}px)`, gridTemplateColumns: template }} key={i}>
        {columns.map((c) => {
          const v = r[c];
          return (
            <div role="gridcell" class={v === null || v === undefined ? "null" : typeof v === "number" ? "num" : ""} title={cell(v)}>
              {cell(v)}
            </div>
          );
        })}
      </div>,
    );
  }
  return (
    <div class="grid" role="grid" aria-label={props.label} aria-rowcount={rows.length + 1} aria-colcount={columns.length}>
      <div role="row" aria-rowindex={1} class="grid-head" style={{ gridTemplateColumns: template }}>
        {columns.map((c) => (
          <div role="columnheader" title={c}>
            {c}
          </div>
        ))}
      </div>
      <div
        class="grid-body"
        ref={box}
        tabIndex={0}
        aria-label={`${props.label}: ${rows.length} rows; scroll with the arrow and page keys`}
        style={{ height: `${Math.min(height, Math.max(ROW, rows.length * ROW) + 2)}px` }}
        onScroll={(e) => setTop((e.target as HTMLDivElement).scrollTop)}
      >
        <div class="grid-space" style={{ height: `${rows.length * ROW}px` }}>
          {visible}
        </div>
      </div>
    </div>
  );
}

/** `rows` as RFC 4180 CSV. */
export function toCsv(columns: string[], rows: Row[]): string {
  const q = (s: string) => (/[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  const lines = [columns.map(q).join(",")];
  for (const r of rows) lines.push(columns.map((c) => (r[c] === null || r[c] === undefined ? "" : q(cell(r[c])))).join(","));
  return `${lines.join("\r\n")}\r\n`;
}
