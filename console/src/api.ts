// The console's only way to the server: the public REST API with the user's token, so
// grants, row filters and masks apply exactly as they do to any other client.

const TOKEN_KEY = "strata.token";

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t: string | null) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The server's error, as `{"error": {"code", "message"}}` carries it. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The API root: the console is served under `<base>/` on the REST port. */
function url(path: string): string {
  return new URL(path, window.location.origin).toString();
}

async function failure(r: Response): Promise<ApiError> {
  let code = String(r.status);
  let message = r.statusText || `HTTP ${r.status}`;
  try {
    const body = await r.json();
    if (body?.error) {
      code = body.error.code ?? code;
      message = body.error.message ?? message;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  if (r.status === 401) onUnauthorized();
  return new ApiError(r.status, code, message);
}

let unauthorized: () => void = () => {};
export function whenUnauthorized(f: () => void) {
  unauthorized = f;
}
function onUnauthorized() {
  unauthorized();
}

export async function request(
  method: string,
  path: string,
  body?: unknown,
  init: { signal?: AbortSignal; accept?: string; open?: boolean } = {},
): Promise<Response> {
  const headers: Record<string, string> = { Accept: init.accept ?? "application/json" };
  const t = token();
  if (t && !init.open) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url(path), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: init.signal,
    credentials: "omit",
    cache: "no-store",
  });
  if (!r.ok) throw await failure(r);
  return r;
}

export async function get<T>(path: string, signal?: AbortSignal): Promise<T> {
  return (await request("GET", path, undefined, { signal })).json();
}

export async function send<T>(method: string, path: string, body?: unknown): Promise<T> {
  const r = await request(method, path, body);
  const text = await r.text();
  return (text ? JSON.parse(text) : null) as T;
}

/** An open route (health, readiness): no token, and a 503 is an answer, not an error. */
export async function open<T>(path: string): Promise<{ status: number; body: T | null }> {
  const r = await fetch(url(path), { credentials: "omit", cache: "no-store" });
  let body: T | null = null;
  try {
    body = await r.json();
  } catch {
    body = null;
  }
  return { status: r.status, body };
}

export function path(...parts: string[]): string {
  return parts.map(encodeURIComponent).join("/");
}

// ---- Shapes the screens read (the OpenAPI document at /api/v1/openapi.json has them all).

export interface Column {
  name: string;
  type: string;
  nullable: boolean;
  description?: string | null;
  metadata?: Record<string, string>;
}

export interface TableInfo {
  layer: string;
  name: string;
  full_name: string;
  description: string | null;
  owner: string | null;
  columns: Column[];
  partition_columns: string[];
  properties: Record<string, string>;
  created_at: string | null;
  /** Storage figures: shown to holders of more than SELECT (absent otherwise). */
  version?: number;
  file_count?: number;
  size_bytes?: number;
}

export interface RowFilter {
  roles: string[];
  predicate: string;
}
export interface ColumnMask {
  column: string;
  mask: string;
  exempt_roles?: string[];
}
export interface Policies {
  version: number;
  row_filters: RowFilter[];
  column_masks: ColumnMask[];
}
export interface Grant {
  role: string;
  privilege: string;
  on: string;
}
export interface Grants {
  version: number;
  grants: Grant[];
  config_grants: Grant[];
}

export type Row = Record<string, unknown>;

export interface QueryResult {
  rows: Row[];
  columns: string[];
  statement: string | null;
  cache: string | null;
  ms: number;
  /** The server's own time to the first batch (its Server-Timing header). */
  serverMs: number | null;
}

/** Runs `sql` with `params`: the rows as JSON, with the response's own timing and cache headers. */
export async function query(sql: string, params: unknown[] = [], signal?: AbortSignal): Promise<QueryResult> {
  const started = performance.now();
  const r = await request("POST", "/api/v1/query", { sql, params }, { signal });
  const rows = (await r.json()) as Row[];
  const columns = rows.length > 0 ? Object.keys(rows[0]) : [];
  return {
    rows,
    columns,
    statement: r.headers.get("x-strata-statement"),
    cache: r.headers.get("x-strata-cache"),
    ms: performance.now() - started,
    serverMs: serverTiming(r.headers.get("server-timing"), "first-batch"),
  };
}

/** The `dur` of metric `name` in a Server-Timing header. */
export function serverTiming(header: string | null, name: string): number | null {
  for (const metric of (header ?? "").split(",")) {
    const [n, ...params] = metric.split(";").map((x) => x.trim());
    if (n !== name) continue;
    for (const p of params) {
      if (p.startsWith("dur=")) return Number(p.slice(4));
    }
  }
  return null;
}

/** `s` quoted as an SQL identifier when it needs to be. */
export function ident(s: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(s) ? s : `"${s.replace(/"/g, '""')}"`;
}
