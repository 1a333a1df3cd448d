// @busbar/client: the browser (and Node) client of busbar's realtime WebSocket protocol.
export { BusbarClient, matchesType } from './client.js';
export { GapTracker, roomKey } from './gaps.js';
export { backoffDelay, closeAction, DEFAULT_BACKOFF } from './policy.js';
export { jwtClaims, refreshDelay } from './token.js';
