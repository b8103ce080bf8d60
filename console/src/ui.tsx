// Small shared pieces: links, loading and error states, tables of key/values.
import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { follow, href } from "./router";
import { ApiError } from "./api";

export function Link(props: { to: string; children: ComponentChildren; class?: string; current?: boolean }) {
  return (
    <a
      href={href(props.to)}
      class={props.class}
      aria-current={props.current ? "page" : undefined}
      onClick={(e) => follow(e as MouseEvent, props.to)}
    >
      {props.children}
    </a>
  );
}

export function ErrorNote({ error }: { error: unknown }) {
  if (!error) return null;
  const e = error as Error;
  const status = e instanceof ApiError ? `${e.status} ${e.code}: ` : "";
  return (
    <p class="error" role="alert">
      {status}
      {e.message ?? String(e)}
    </p>
  );
}

export type Loaded<T> = { data: T | null; error: unknown; loading: boolean; reload: () => void };

/** Loads `f` on mount and whenever `deps` change; `reload` loads again. */
export function useLoad<T>(f: (signal: AbortSignal) => Promise<T>, deps: unknown[]): Loaded<T> {
  const [state, setState] = useState<{ data: T | null; error: unknown; loading: boolean }>({
    data: null,
    error: null,
    loading: true,
  });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    const abort = new AbortController();
    setState((s) => ({ ...s, loading: true }));
    f(abort.signal).then(
      (data) => !abort.signal.aborted && setState({ data, error: null, loading: false }),
      (error) => !abort.signal.aborted && setState({ data: null, error, loading: false }),
    );
    return () => abort.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  return { ...state, reload: () => setTick((t) => t + 1) };
}

export function Show<T>(props: { loaded: Loaded<T>; children: (data: T) => ComponentChildren }) {
  const { data, error, loading } = props.loaded;
  if (error) return <ErrorNote error={error} />;
  if (data === null) return loading ? <p class="muted" aria-busy="true">Loading…</p> : null;
  return <>{props.children(data)}</>;
}

export function Status({ value }: { value: string | null | undefined }) {
  const v = value ?? "never run";
  return <span class={`status status-${v.replace(/[^a-z_]/g, "")}`}>{v}</span>;
}

export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function when(t: string | null | undefined): string {
  if (!t) return "—";
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? t : d.toLocaleString();
}

export function Missing({ what }: { what: string }) {
  return (
    <p class="muted">
      {what}
    </p>
  );
}
