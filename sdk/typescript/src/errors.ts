/**
 * Every failure the SDK reports: a protocol error code (`forbidden`,
 * `rate_limited`, `too_large`, `not_found`, `auth_failed`, ...), or one of the
 * SDK's own: `timeout` (no answer within `requestTimeoutMs`), `closed` (the
 * client was closed or stopped, or the socket carrying the request was lost),
 * `network` (a REST request could not reach the server).
 */
export class CourierError extends Error {
  /** The protocol error code, or 'timeout' | 'closed' | 'network'. */
  readonly code: string;
  /** With `rate_limited`: when to try again. */
  retryAfterMs?: number;
  /** With a REST validation error: the field it names. */
  field?: string;
  /** With a REST error: the HTTP status. */
  status?: number;

  constructor(code: string, message: string, extra: { retryAfterMs?: number; field?: string; status?: number } = {}) {
    super(message);
    this.name = 'CourierError';
    this.code = code;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
    if (extra.field !== undefined) this.field = extra.field;
    if (extra.status !== undefined) this.status = extra.status;
  }
}
