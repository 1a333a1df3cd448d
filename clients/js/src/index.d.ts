// Types of @busbar/client (see docs/client.md).
export { BusbarClient, matchesType } from './client.js';
export type {
  BusbarClientOptions,
  BusbarError,
  ClientState,
  EventFrame,
  Room,
  StateInfo,
  SubscribeAck,
  Unsubscribe,
  UnsubscribeAck,
  WebSocketConstructor,
} from './client.js';
export { GapTracker, roomKey } from './gaps.js';
export type { Gap, Observation, Position, PositionedFrame } from './gaps.js';
export { backoffDelay, closeAction, DEFAULT_BACKOFF } from './policy.js';
export type { BackoffOptions, CloseAction } from './policy.js';
export { jwtClaims, refreshDelay } from './token.js';
export type { JwtClaims } from './token.js';
