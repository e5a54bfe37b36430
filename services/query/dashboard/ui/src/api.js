// Every request the app makes: same origin, session cookie, CSRF token on mutations, or a
// share link's token; a 202 (archived days being restored) becomes a RestoreNeeded.
let csrfToken = "";
let shareToken = null;

export function setCsrf(token) {
  csrfToken = token || "";
}

export function setShare(token) {
  shareToken = token;
}

export class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

export class RestoreNeeded extends Error {
  constructor(body) {
    super(body.error);
    this.restore = body.restore;
    this.statusUrl = body.status_url;
  }
}

export function buildUrl(path, query) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(name, String(v));
  }
  return url;
}

export async function api(path, { method = "GET", query, body, project } = {}) {
  const q = { ...(query || {}) };
  if (project && !shareToken) q.project = project;
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  if (shareToken) headers["X-Strata-Share"] = shareToken;
  const response = await fetch(buildUrl(path, q), {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 202 && data && data.restore) throw new RestoreNeeded(data);
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || response.statusText, data && data.param);
  }
  return data;
}
