// SQL: an editor with table and column completion from the catalog, parameters, run and
// cancel, a virtualized result grid with the response's timing and cache headers, CSV
// download and EXPLAIN.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { type QueryResult, type TableInfo, get, query } from "../api";
import { ErrorNote } from "../ui";
import { Grid, toCsv } from "../grid";

interface Suggestion {
  text: string;
  kind: string;
}

/** The word being typed before the cursor (identifiers and dots). */
function wordAt(text: string, at: number): { start: number; word: string } {
  let start = at;
  while (start > 0 && /[A-Za-z0-9_.]/.test(text[start - 1])) start--;
  return { start, word: text.slice(start, at) };
}

export function Sql() {
  const [sql, setSql] = useState(sessionStorage.getItem("strata.sql") ?? "SELECT 1 AS one");
  const [params, setParams] = useState("");
  const [result, setResult] = useState<QueryResult | null>(null);
  const [plan, setPlan] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [running, setRunning] = useState<AbortController | null>(null);
  const [catalog, setCatalog] = useState<TableInfo[]>([]);
  const [suggest, setSuggest] = useState<{ items: Suggestion[]; index: number; start: number } | null>(null);
  const editor = useRef<HTMLTextAreaElement>(null);

  useEffect(() => {
    get<{ tables: TableInfo[] }>("/api/v1/tables").then(
      (t) => setCatalog(t.tables),
      () => setCatalog([]),
    );
  }, []);
  useEffect(() => sessionStorage.setItem("strata.sql", sql), [sql]);

  const words = useMemo(() => {
    const out: Suggestion[] = [];
    const seen = new Set<string>();
    for (const t of catalog) {
      out.push({ text: t.full_name, kind: "table" });
      for (const c of t.columns) {
        if (!seen.has(c.name)) {
          seen.add(c.name);
          out.push({ text: c.name, kind: `column of ${t.full_name}` });
        }
      }
    }
    return out;
  }, [catalog]);

  const complete = (open: boolean) => {
    const el = editor.current;
    if (!el) return;
    const { start, word } = wordAt(el.value, el.selectionStart);
    if (!open && word.length < 2) {
      setSuggest(null);
      return;
    }
    const w = word.toLowerCase();
    // After `layer.`, a column after `table.` or a table's name by its own part.
    const items = words
      .filter((s) => s.text.toLowerCase().startsWith(w) || (s.kind === "table" && s.text.split(".")[1]?.startsWith(w)))
      .filter((s) => s.text.toLowerCase() !== w)
      .slice(0, 12);
    setSuggest(items.length ? { items, index: 0, start } : null);
  };

  const accept = (s: Suggestion) => {
    const el = editor.current;
    if (!el || !suggest) return;
    const at = el.selectionStart;
    const next = el.value.slice(0, suggest.start) + s.text + el.value.slice(at);
    setSql(next);
    setSuggest(null);
    const caret = suggest.start + s.text.length;
    requestAnimationFrame(() => {
      el.focus();
      el.setSelectionRange(caret, caret);
    });
  };

  const run = async (text: string, explain: boolean) => {
    running?.abort();
    const abort = new AbortController();
    setRunning(abort);
    setError(null);
    setPlan(null);
    let values: unknown[] = [];
    try {
      if (params.trim() !== "") {
        values = JSON.parse(params);
        if (!Array.isArray(values)) throw new Error("parameters are a JSON array, e.g. [1, \"eu\"]");
      }
    } catch (e) {
      setError(new Error(`Parameters: ${(e as Error).message}`));
      setRunning(null);
      return;
    }
    try {
      const r = await query(explain ? `EXPLAIN ${text}` : text, values, abort.signal);
      if (explain) {
        setPlan(r.rows.map((row) => `${row.plan_type ?? ""}\n${row.plan ?? ""}`).join("\n\n"));
      } else {
        setResult(r);
      }
    } catch (e) {
      if ((e as Error).name === "AbortError") setError(new Error("Cancelled: the server stops the query when the request goes away."));
      else setError(e);
    } finally {
      setRunning((r) => (r === abort ? null : r));
    }
  };

  const download = () => {
    if (!result) return;
    const blob = new Blob([toCsv(result.columns, result.rows)], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "result.csv";
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };

  const onKey = (e: KeyboardEvent) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      e.preventDefault();
      setSuggest(null);
      void run(sql, false);
      return;
    }
    if (e.ctrlKey && e.key === " ") {
      e.preventDefault();
      complete(true);
      return;
    }
    if (!suggest) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const n = suggest.items.length;
      setSuggest({ ...suggest, index: (suggest.index + (e.key === "ArrowDown" ? 1 : n - 1)) % n });
    } else if (e.key === "Enter" || e.key === "Tab") {
      e.preventDefault();
      accept(suggest.items[suggest.index]);
    } else if (e.key === "Escape") {
      e.preventDefault();
      setSuggest(null);
    }
  };

  return (
    <section>
      <h1>SQL</h1>
      <label for="sql-editor">Query</label>
      <div class="editor">
        <textarea
          id="sql-editor"
          ref={editor}
          rows={8}
          spellcheck={false}
          value={sql}
          aria-autocomplete="list"
          aria-controls="sql-suggestions"
          aria-expanded={suggest !== null}
          aria-activedescendant={suggest ? `suggestion-${suggest.index}` : undefined}
          onInput={(e) => {
            setSql((e.target as HTMLTextAreaElement).value);
            complete(false);
          }}
          onKeyDown={onKey}
          onBlur={() => setTimeout(() => setSuggest(null), 150)}
        />
        {suggest ? (
          <ul id="sql-suggestions" role="listbox" class="suggestions" aria-label="Completions">
            {suggest.items.map((s, i) => (
              <li
                id={`suggestion-${i}`}
                role="option"
                aria-selected={i === suggest.index}
                key={s.text}
                onMouseDown={(e) => {
                  e.preventDefault();
                  accept(s);
                }}
              >
                <code>{s.text}</code> <span class="muted small">{s.kind}</span>
              </li>
            ))}
          </ul>
        ) : null}
      </div>
      <p class="muted small">Ctrl+Enter runs; Ctrl+Space completes table and column names. Parameters bind to $1…$n.</p>
      <label for="sql-params">Parameters (JSON array)</label>
      <input id="sql-params" value={params} placeholder='[1, "eu"]' onInput={(e) => setParams((e.target as HTMLInputElement).value)} />
      <div class="actions">
        <button type="button" id="run-query" onClick={() => void run(sql, false)} disabled={running !== null}>
          Run
        </button>
        <button type="button" onClick={() => running?.abort()} disabled={running === null}>
          Cancel
        </button>
        <button type="button" class="ghost" onClick={() => void run(sql, true)} disabled={running !== null}>
          Explain
        </button>
        <button type="button" class="ghost" onClick={download} disabled={!result || result.rows.length === 0}>
          Download CSV
        </button>
      </div>
      {running ? (
        <p aria-busy="true" role="status">
          Running…
        </p>
      ) : null}
      <ErrorNote error={error} />
      {plan !== null ? (
        <pre class="plan" aria-label="Plan">
          {plan}
        </pre>
      ) : null}
      {result ? (
        <>
          <p role="status" id="result-summary">
            <strong id="row-count">{result.rows.length}</strong> row(s) in {result.ms.toFixed(0)} ms
            {result.serverMs !== null ? ` (server: ${result.serverMs.toFixed(0)} ms to the first batch)` : ""}
            {result.statement ? ` · ${result.statement}` : ""}
            {result.cache ? ` · cache ${result.cache}` : ""}
          </p>
          {result.columns.length > 0 ? <Grid columns={result.columns} rows={result.rows} label="Result" /> : null}
        </>
      ) : null}
    </section>
  );
}
