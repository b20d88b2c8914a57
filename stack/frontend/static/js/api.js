// HTTP to the auth service and the backend: tokens, request ids, one refresh on 401.
import config from "/config.js";

export const STORAGE = Object.freeze({
  access: "tl.access_token",
  refresh: "tl.refresh_token",
  activeThread: "tl.active_thread_id",
});

// Set by a deliberate logout until the next login stores tokens: a 401 or 4401 that races the
// logout (the session is revoked server-side first) must not turn into "session expired".
let loggedOut = false;
export function markLoggedOut() {
  loggedOut = true;
}

export const tokens = {
  get access() {
    return localStorage.getItem(STORAGE.access);
  },
  get refresh() {
    return localStorage.getItem(STORAGE.refresh);
  },
  get present() {
    return Boolean(localStorage.getItem(STORAGE.access));
  },
  store(access, refresh) {
    loggedOut = false;
    if (access) localStorage.setItem(STORAGE.access, access);
    if (refresh) localStorage.setItem(STORAGE.refresh, refresh);
  },
  clear() {
    localStorage.removeItem(STORAGE.access);
    localStorage.removeItem(STORAGE.refresh);
    localStorage.removeItem(STORAGE.activeThread);
  },
};

export const SERVICES = Object.freeze({
  auth: { base: config.authUrl, label: "The sign-in service" },
  backend: { base: config.backendUrl, label: "The chat service" },
});

/** The service could not be reached at all (connection refused, DNS, CORS failure). */
export class ServiceUnreachable extends Error {
  constructor(service) {
    super(`${SERVICES[service].label} is unreachable`);
    this.service = service;
  }
}

/** The session could not be renewed; the app is already on its way to the login page. */
export class SessionExpired extends Error {
  constructor() {
    super("Your session has expired. Please log in again.");
  }
}

let sessionExpiredHandler = () => {};
export function onSessionExpired(handler) {
  sessionExpiredHandler = handler;
}

export function newRequestId() {
  return crypto.randomUUID();
}

async function rawRequest(service, path, { method = "GET", body, auth = true, query } = {}) {
  const url = new URL(SERVICES[service].base + path);
  for (const [k, v] of Object.entries(query || {})) url.searchParams.set(k, v);
  const headers = { Accept: "application/json", "X-Request-ID": newRequestId() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (auth && tokens.access) headers.Authorization = `Bearer ${tokens.access}`;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
    });
  } catch {
    throw new ServiceUnreachable(service);
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text };
    }
  }
  return { ok: response.ok, status: response.status, data, headers: response.headers, requestId: headers["X-Request-ID"] };
}

let refreshInFlight = null;

/** Exchange the refresh token for new tokens; concurrent callers share one attempt. */
export function refreshSession() {
  if (!refreshInFlight) {
    refreshInFlight = (async () => {
      const refresh = tokens.refresh;
      if (!refresh || loggedOut) return false;
      try {
        const res = await rawRequest("auth", "/auth/refresh", {
          method: "POST",
          body: { refresh_token: refresh },
          auth: false,
        });
        if (!res.ok || !res.data || !res.data.access_token || loggedOut) return false;
        tokens.store(res.data.access_token, res.data.refresh_token);
        return true;
      } catch {
        return false;
      }
    })().finally(() => {
      refreshInFlight = null;
    });
  }
  return refreshInFlight;
}

export function expireSession() {
  if (loggedOut) return;
  tokens.clear();
  sessionExpiredHandler();
}

/**
 * One HTTP call. Resolves with {ok, status, data, headers}; throws ServiceUnreachable when the
 * service cannot be reached and SessionExpired when a 401 survives one refresh.
 */
export async function request(service, path, options = {}) {
  const auth = options.auth !== false;
  let res = await rawRequest(service, path, options);
  if (res.status === 401 && auth && tokens.refresh) {
    if (await refreshSession()) res = await rawRequest(service, path, options);
  }
  if (res.status === 401 && auth) {
    expireSession();
    throw new SessionExpired();
  }
  return res;
}

/** Seconds to wait from a 429: body `retry_after` (or `detail.retry_after`), else the Retry-After header. */
export function retryAfterSeconds(res) {
  const d = res.data || {};
  const fromBody = d.retry_after ?? (d.detail && typeof d.detail === "object" ? d.detail.retry_after : undefined);
  const value = fromBody ?? res.headers.get("Retry-After");
  const seconds = Number.parseInt(value, 10);
  return Number.isFinite(seconds) && seconds > 0 ? seconds : null;
}

/** A human sentence from an error body, whatever shape the service used. */
export function errorMessage(res, fallback) {
  const d = res.data;
  if (!d) return fallback;
  if (typeof d.message === "string") return d.message;
  if (typeof d.detail === "string") return d.detail;
  if (d.detail && typeof d.detail.message === "string") return d.detail.message;
  if (d.error && typeof d.error.message === "string") return d.error.message;
  return fallback;
}

/** An error code from an error body (`code`, `error`, `detail.code`, `error.code`). */
export function errorCode(res) {
  const d = res.data || {};
  if (typeof d.code === "string") return d.code;
  if (typeof d.error === "string") return d.error;
  if (d.detail && typeof d.detail.code === "string") return d.detail.code;
  if (d.error && typeof d.error.code === "string") return d.error.code;
  return null;
}

/**
 * Field errors of a 422 as {field: message}. Accepts `{errors: [{field, message}]}` (the contract),
 * and FastAPI's `{detail: [{loc: [..., field], msg}]}`.
 */
export function fieldErrors(res) {
  const d = res.data || {};
  let list = [];
  if (Array.isArray(d.errors)) list = d.errors;
  else if (d.detail && Array.isArray(d.detail)) list = d.detail;
  else if (d.detail && Array.isArray(d.detail.errors)) list = d.detail.errors;
  const out = {};
  for (const item of list) {
    if (!item || typeof item !== "object") continue;
    let field = item.field ?? item.name ?? (Array.isArray(item.loc) ? item.loc[item.loc.length - 1] : null);
    const message = item.message ?? item.msg ?? item.detail;
    if (typeof field !== "string" || !message) field = "_form";
    if (!out[field]) out[field] = String(message || "Invalid value");
  }
  return out;
}
