// REST calls the client needs: login, token refresh, and authorized requests
// (shared/PROTOCOL.md section 6).

import { CourierError } from './errors.js';
import { decodeUser, type User } from './frames.js';

/** What `login` answers and `refresh-token` renews. */
export interface Session {
  /** The access token (a JWT), sent in `authenticate` and `Authorization: Bearer`. */
  token: string;
  /** The refresh token; rotated by every refresh (the old one stops working). */
  refreshToken: string;
  /** The access token's lifetime in seconds, as answered. */
  expiresIn: number;
  user: User;
  /**
   * When the access token expires (ms since the epoch, this machine's clock).
   * Set by `login` and by refreshes; without it the client reads the token's
   * `exp` claim, or counts `expiresIn` from when it was handed the session.
   */
  expiresAt?: number;
}

export type FetchLike = typeof globalThis.fetch;

/** Joins a base URL and an absolute path without doubling the slash. */
export function joinUrl(baseUrl: string, path: string): string {
  return baseUrl.replace(/\/+$/, '') + (path.startsWith('/') ? path : `/${path}`);
}

/** Turns a non-2xx answer into a CourierError with the protocol's code. */
export async function errorFrom(res: Response): Promise<CourierError> {
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    body = undefined;
  }
  const err = (body as { error?: Record<string, unknown> } | undefined)?.error;
  const code = typeof err?.code === 'string' ? err.code : res.status === 401 ? 'auth_failed' : `http_${res.status}`;
  const message = typeof err?.message === 'string' ? err.message : `HTTP ${res.status}`;
  const extra: { retryAfterMs?: number; field?: string; status: number } = { status: res.status };
  if (typeof err?.retryAfterMs === 'number') extra.retryAfterMs = err.retryAfterMs;
  else {
    const header = Number(res.headers.get('retry-after'));
    if (res.headers.has('retry-after') && Number.isFinite(header)) extra.retryAfterMs = header * 1000;
  }
  if (typeof err?.field === 'string') extra.field = err.field;
  return new CourierError(code, message, extra);
}

/** One JSON request; resolves the parsed body (undefined for 204), rejects CourierError. */
export async function requestJson(
  fetchFn: FetchLike,
  method: string,
  url: string,
  body?: unknown,
  token?: string,
): Promise<unknown> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token !== undefined) headers.Authorization = `Bearer ${token}`;
  let res: Response;
  try {
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    res = await fetchFn(url, init);
  } catch (e) {
    throw new CourierError('network', `${method} ${url}: ${(e as Error).message}`);
  }
  if (!res.ok) throw await errorFrom(res);
  if (res.status === 204) return undefined;
  const text = await res.text();
  return text === '' ? undefined : JSON.parse(text);
}

function tokenFields(v: unknown): { token: string; refreshToken: string; expiresIn: number } {
  const o = v as Record<string, unknown> | undefined;
  if (typeof o?.token !== 'string' || typeof o.refreshToken !== 'string' || typeof o.expiresIn !== 'number') {
    throw new CourierError('invalid_frame', 'the server answered no token');
  }
  return { token: o.token, refreshToken: o.refreshToken, expiresIn: o.expiresIn };
}

/** POST {baseUrl}/api/auth/login: resolves a Session, rejects CourierError (`auth_failed`, `rate_limited`, ...). */
export async function login(
  baseUrl: string,
  username: string,
  password: string,
  options: { fetch?: FetchLike } = {},
): Promise<Session> {
  const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
  const before = Date.now();
  const body = await requestJson(fetchFn, 'POST', joinUrl(baseUrl, '/api/auth/login'), { username, password });
  const t = tokenFields(body);
  return { ...t, user: decodeUser((body as Record<string, unknown>).user), expiresAt: before + t.expiresIn * 1000 };
}

/**
 * POST {baseUrl}/api/auth/refresh-token: the renewed session (same user, new
 * tokens). The old refresh token stops working once this answers.
 */
export async function refreshSession(baseUrl: string, session: Session, options: { fetch?: FetchLike } = {}): Promise<Session> {
  const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
  const before = Date.now();
  const body = await requestJson(fetchFn, 'POST', joinUrl(baseUrl, '/api/auth/refresh-token'), {
    refreshToken: session.refreshToken,
  });
  const t = tokenFields(body);
  return { ...t, user: session.user, expiresAt: before + t.expiresIn * 1000 };
}

/** The `exp` claim of a JWT in ms, or undefined when it cannot be read. */
export function jwtExpiry(token: string): number | undefined {
  const part = token.split('.')[1];
  if (part === undefined) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4))) as { exp?: unknown };
    return typeof json.exp === 'number' ? json.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
