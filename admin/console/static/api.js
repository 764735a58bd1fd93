// The admin API, called with the operator's token as a bearer header. The token lives in
// sessionStorage (this tab only, gone when it closes): never in a URL, never in a cookie.

const KEY = "turnout.console.token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  sessionStorage.setItem(KEY, value.trim());
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body, method, path) {
    const err = (body && body.error) || {};
    super(`${method} ${path}: HTTP ${status} ${err.code || ""} ${err.message || ""}`.trim());
    this.status = status;
    this.code = err.code || `http_${status}`;
    this.detail = err.message || "";
    this.body = body;
  }
}

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** One API call; resolves to {status, data}, throws ApiError for a non-2xx answer. */
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    headers["Idempotency-Key"] = `console-${randomKey()}`;
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: { code: "not_json", message: text.slice(0, 200) } };
  }
  if (!resp.ok) throw new ApiError(resp.status, data, method, path);
  return { status: resp.status, data };
}

export async function get(path) {
  return (await call("GET", path)).data;
}

/** Every item of a paged list (follows next_cursor, at most `pages` pages). */
export async function all(path, pages = 20) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < pages; i++) {
    const sep = path.includes("?") ? "&" : "?";
    const url = `${path}${sep}limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
    const page = await get(url);
    items.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return items;
}

export const enc = encodeURIComponent;
