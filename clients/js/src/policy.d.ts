// Types of policy.js: the reconnect policy (close codes, backoff).

export interface BackoffOptions {
  /** Delay before the first reconnect attempt, in ms. Default 1000. */
  initialMs: number;
  /** Largest delay, in ms (before jitter). Default 30000. */
  maxMs: number;
  /** Growth per attempt. Default 2. */
  factor: number;
  /** Relative spread: the delay is multiplied by 1 ± jitter. Default 0.2. */
  jitter: number;
}

export type CloseAction = 'retry' | 'refresh-token' | 'stop';

export declare const DEFAULT_BACKOFF: Readonly<BackoffOptions>;

/** What to do after the server closed with `code` (docs/protocol.md, "Close codes"). */
export declare function closeAction(code: number): CloseAction;

/** min(maxMs, initialMs * factor^attempt) * (1 ± jitter), `random()` in [0, 1). */
export declare function backoffDelay(attempt: number, options?: Partial<BackoffOptions>, random?: () => number): number;
