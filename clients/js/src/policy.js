// Reconnect policy: what to do after a close code, and how long to wait before the next attempt.
// Pure functions, shared by the client and its tests; docs/protocol.md "Close codes" is the source.

/** Default exponential backoff: 1 s, 2 s, 4 s ... capped at 30 s, each ±20 %. */
export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 1000, maxMs: 30000, factor: 2, jitter: 0.2 });

/** Close codes after which reconnecting cannot help: new credentials or a client fix is needed. */
const STOP_CODES = new Set([4500, 4502, 4503]);

/**
 * What a client should do after the server closed with `code`:
 * 'refresh-token' (4501: get a fresh token, then reconnect), 'stop' (4500, 4502, 4503 and any
 * other code from 4505 to 4999) or 'retry' (everything else, with backoff: 1000, 1001, 1006,
 * 1009, 4000-4499, 4504).
 */
export function closeAction(code) {
  if (code === 4501) return 'refresh-token';
  if (STOP_CODES.has(code) || (code >= 4505 && code <= 4999)) return 'stop';
  return 'retry';
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first):
 * min(maxMs, initialMs * factor^attempt), spread by ±jitter with `random()` in [0, 1).
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const { initialMs, maxMs, factor, jitter } = { ...DEFAULT_BACKOFF, ...options };
  const base = Math.min(maxMs, initialMs * factor ** Math.max(0, attempt));
  const spread = jitter * (2 * random() - 1);
  return Math.max(0, Math.round(base * (1 + spread)));
}
