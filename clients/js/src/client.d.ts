// Types of client.js: BusbarClient, its options, frames and callbacks.

import type { BackoffOptions } from './policy.js';
import type { Gap } from './gaps.js';

export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** A room: `scope` is `workspace`, `user`, `task`, `chat` (or `everyone`, with id ''). */
export interface Room {
  scope: string;
  id: string;
}

/** An event frame (docs/protocol.md, "Event frames"). */
export interface EventFrame<P = unknown> {
  type: string;
  payload: P;
  actor_id: string;
  actor_type: string;
  event_id: string;
  workspace_id: string;
  scope: string;
  scope_id: string;
  epoch: string;
  seq: number;
  [key: string]: unknown;
}

/** The payload of `subscribe_ack`. */
export interface SubscribeAck {
  scope: string;
  id: string;
  workspace_id?: string;
  epoch?: string;
  offset?: number;
  /** Present when a position was sent: whether the missed frames follow. */
  recovered?: boolean;
}

export interface UnsubscribeAck {
  scope: string;
  id: string;
}

/**
 * An error from the client: `code` is the server's (`forbidden`, `invalid_token`,
 * `other_user`, ...) or the client's (`closed`, `unsubscribed`, `token_unavailable`,
 * `socket_failed`). A handler's own exception is passed on as it was thrown.
 */
export interface BusbarError extends Error {
  code?: string;
  /** For a refused subscribe. */
  room?: Room;
  /** For `closed`: the close code that ended the client. */
  closeCode?: number;
  cause?: unknown;
}

/** Given with the `closed` state: the close code and reason that ended the client. */
export interface StateInfo {
  code: number;
  reason: string;
}

/**
 * What the client needs of a WebSocket class: the browser's, Node 22's global, or the `ws`
 * package's. The client sets `onopen`, `onmessage`, `onclose` and `onerror` on the instance.
 */
export type WebSocketConstructor = new (url: string) => {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
};

export type Unsubscribe = () => void;

interface CommonOptions {
  /** The ws(s):// (or http(s)://, or relative in a browser) URL of busbar's `/ws`. */
  url: string | URL;
  /** Added to the URL as the `workspace_id` query parameter. */
  workspaceId: string;
  /** Defaults to globalThis.WebSocket (absent in Node 20: pass the `ws` package's). */
  WebSocket?: WebSocketConstructor;
  backoff?: Partial<BackoffOptions>;
  /** Client pings (`{"type":"ping"}`) this often once authenticated. Default 25000. */
  pingIntervalMs?: number;
  /** No frame this long after a ping (or after opening, before `auth_ack`): reconnect. Default 10000. */
  pongTimeoutMs?: number;
  /** For tests: [0, 1) randomness for jitter. Default Math.random. */
  random?: () => number;
  /** For tests: timers. Default the global ones. */
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: any) => void;
  /** For tests: the clock, in ms since the epoch. Default Date.now. */
  now?: () => number;
  onStateChange?: (state: ClientState, info?: StateInfo) => void;
  onError?: (error: BusbarError) => void;
  onGap?: (room: Room, gap: Gap) => void;
  onRecoveryFailed?: (room: Room) => void;
}

export type BusbarClientOptions = CommonOptions &
  (
    | { /** A fixed token (cannot be renewed: expiry ends the client). */ token: string; getToken?: undefined }
    | { /** Called on every (re)connect and before `exp`. */ getToken: () => string | Promise<string>; token?: undefined }
  );

/** Whether a handler pattern (an exact type, `prefix:*` or `*`) matches an event type. */
export declare function matchesType(pattern: string, type: string): boolean;

export declare class BusbarClient {
  constructor(options: BusbarClientOptions);
  readonly state: ClientState;
  /** Starts connecting; reconnects until close() or a close code that says stop. */
  connect(): this;
  /** Closes with 1000, stops reconnecting, rejects pending subscribes (code `closed`). */
  close(): void;
  /** Joins a room, remembered and resumed after reconnects. Rejects with `.code` on refusal. */
  subscribe(scope: string, id: string): Promise<SubscribeAck>;
  /** Leaves a room and forgets it (resolves at once, with undefined, when not connected). */
  unsubscribe(scope: string, id: string): Promise<UnsubscribeAck | undefined>;
  /** Event frames of a type: exact (`issue:created`), a prefix (`task:*`) or all (`*`). */
  on<P = unknown>(eventType: string, handler: (frame: EventFrame<P>) => void): Unsubscribe;
  /** Event frames sent to one room. */
  onRoom<P = unknown>(scope: string, id: string, handler: (frame: EventFrame<P>) => void): Unsubscribe;
  onStateChange(handler: (state: ClientState, info?: StateInfo) => void): Unsubscribe;
  onError(handler: (error: BusbarError) => void): Unsubscribe;
  onGap(handler: (room: Room, gap: Gap) => void): Unsubscribe;
  onRecoveryFailed(handler: (room: Room) => void): Unsubscribe;
}
