/** Reconnect delays: exponential backoff with full jitter, capped. */
export interface BackoffOptions {
  /** The ceiling of the first retry's delay (ms). Default 250. */
  initialDelayMs: number;
  /** The cap of every delay (ms). Default 30000. */
  maxDelayMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialDelayMs: 250, maxDelayMs: 30_000 };

/**
 * The ceiling of retry `attempt` (1, 2, ...): min(maxDelayMs, initialDelayMs · 2^(attempt-1)).
 */
export function backoffCeiling(attempt: number, opts: BackoffOptions = DEFAULT_BACKOFF): number {
  const exp = Math.min(Math.max(attempt - 1, 0), 52);
  return Math.min(opts.maxDelayMs, opts.initialDelayMs * 2 ** exp);
}

/**
 * The delay before retry `attempt` (1, 2, ...): "full jitter", a uniformly random
 * delay in [0, ceiling], so that clients dropped together do not return together.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  return Math.floor(random() * (backoffCeiling(attempt, opts) + 1));
}
