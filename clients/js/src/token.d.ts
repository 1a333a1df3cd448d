// Types of token.js: JWT claims (unverified) and the refresh schedule.

export interface JwtClaims {
  sub?: string;
  exp?: number;
  [claim: string]: unknown;
}

/** The claims of a JWT, read without verifying it; undefined when `token` is not a JWT. */
export declare function jwtClaims(token: unknown): JwtClaims | undefined;

/** Ms to wait before refreshing a token expiring at `exp` (seconds); undefined: do not. */
export declare function refreshDelay(exp: number | undefined, nowMs: number): number | undefined;
