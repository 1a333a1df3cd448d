// Tokens: reading a JWT's claims (without verifying it) and when to refresh before `exp`.
// Pure functions; the server verifies tokens, the client only needs `exp` and `sub`.

/** The claims of a JWT (`{ exp, sub, ... }`), or undefined when `token` is not a JWT. */
export function jwtClaims(token) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3) return undefined;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    return claims && typeof claims === 'object' ? claims : undefined;
  } catch {
    return undefined;
  }
}

/** Longest delay setTimeout accepts (about 24.8 days); longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * How long to wait before refreshing a token that expires at `exp` (seconds since the epoch),
 * at `nowMs`: a fifth of the remaining time, at most a minute, before `exp`. Undefined when
 * less than a second would be left (let it expire: the reconnect fetches a fresh one).
 */
export function refreshDelay(exp, nowMs) {
  if (typeof exp !== 'number' || !Number.isFinite(exp)) return undefined;
  const remaining = exp * 1000 - nowMs;
  const delay = remaining - Math.min(60_000, remaining / 5);
  if (delay < 1000) return undefined;
  return Math.min(MAX_TIMER_MS, Math.round(delay));
}
