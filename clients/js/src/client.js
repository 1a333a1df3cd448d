// BusbarClient: one WebSocket connection to busbar's /ws kept alive (auth frame, token refresh,
// pings, reconnects with backoff), remembered subscriptions resumed from their last position,
// and event frames dispatched to handlers. Frames and close codes follow docs/protocol.md.

import { backoffDelay, closeAction, DEFAULT_BACKOFF } from './policy.js';
import { GapTracker, roomKey } from './gaps.js';
import { jwtClaims, refreshDelay } from './token.js';

const OPEN = 1; // WebSocket.OPEN
/** Subscribe errors that say "later", not "no": a remembered room is retried after a delay. */
const TRANSIENT_ERRORS = new Set(['rate_limited', 'lookup_failed']);

/** Whether a handler pattern (an exact type, `prefix:*` or `*`) matches an event type. */
export function matchesType(pattern, type) {
  if (pattern === '*' || pattern === type) return true;
  return pattern.endsWith(':*') && type.startsWith(pattern.slice(0, -1));
}

function codedError(message, code, extra = {}) {
  return Object.assign(new Error(message), { code }, extra);
}

function tokenError(cause) {
  return codedError(`getToken failed: ${cause?.message ?? cause}`, 'token_unavailable', { cause });
}

/** The `/ws` URL with `workspace_id`; http(s) and relative URLs become ws(s). */
function socketUrl(url, workspaceId) {
  const parsed = new URL(url, globalThis.location?.href);
  if (parsed.protocol === 'http:') parsed.protocol = 'ws:';
  if (parsed.protocol === 'https:') parsed.protocol = 'wss:';
  parsed.searchParams.set('workspace_id', workspaceId);
  return parsed.toString();
}

export class BusbarClient {
  #options;
  #url;
  #WebSocket;
  #getToken;
  #refreshable; // getToken was given: tokens can be renewed
  #setTimeout;
  #clearTimeout;
  #random;
  #now;

  #state = 'closed';
  #ws = null;
  #generation = 0; // bumped per socket and by close(): late callbacks of older ones are ignored
  #authenticated = false; // auth_ack received on the current socket
  #attempt = 0; // reconnect attempts since the last connection that stayed up
  #token;
  #userId;
  #tracker = new GapTracker();
  #subs = new Map(); // roomKey -> { scope, id, joined, acked, retries, ack }
  #waiting = { subscribe: new Map(), unsubscribe: new Map() }; // roomKey -> [{ resolve, reject }]
  #timers = new Map(); // name -> timer id
  #listeners = {
    event: new Map(), // type pattern -> Set of handlers
    room: new Map(), // roomKey -> Set of handlers
    state: new Set(),
    error: new Set(),
    gap: new Set(),
    recoveryFailed: new Set(),
  };

  constructor(options) {
    const { url, workspaceId, token, getToken } = options ?? {};
    if (!url || !workspaceId) throw new TypeError('BusbarClient: url and workspaceId are required');
    if (typeof token !== 'string' && typeof getToken !== 'function') {
      throw new TypeError('BusbarClient: token or getToken is required');
    }
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('BusbarClient: no global WebSocket; pass the WebSocket option');
    }
    const backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.#options = { pingIntervalMs: 25000, pongTimeoutMs: 10000, ...options, backoff };
    this.#url = socketUrl(url, workspaceId);
    this.#refreshable = typeof getToken === 'function';
    this.#getToken = this.#refreshable ? getToken : () => token;
    const setTimer = options.setTimeout ?? globalThis.setTimeout;
    const clearTimer = options.clearTimeout ?? globalThis.clearTimeout;
    this.#setTimeout = (fn, ms) => setTimer(fn, ms);
    this.#clearTimeout = (id) => clearTimer(id);
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? Date.now;
    if (options.onStateChange) this.onStateChange(options.onStateChange);
    if (options.onError) this.onError(options.onError);
    if (options.onGap) this.onGap(options.onGap);
    if (options.onRecoveryFailed) this.onRecoveryFailed(options.onRecoveryFailed);
  }

  /** `connecting`, `open` (authenticated), `reconnecting` or `closed`. */
  get state() {
    return this.#state;
  }

  /** Starts connecting (and keeps reconnecting) until close() or a close code that says stop. */
  connect() {
    if (this.#state !== 'closed') return this;
    this.#attempt = 0;
    this.#openSocket('connecting');
    return this;
  }

  /** Closes with code 1000 and stops reconnecting; pending subscribe promises are rejected. */
  close() {
    if (this.#ws) this.#closeSocket(1000, 'client closed');
    this.#shutDown({ code: 1000, reason: 'client closed' });
  }

  /** Joins a room (remembered, resumed after reconnects); settles on subscribe_ack / _error. */
  subscribe(scope, id) {
    const key = roomKey(scope, id);
    const sub = this.#subs.get(key);
    if (sub?.joined) return Promise.resolve(sub.ack);
    const promise = this.#wait('subscribe', key);
    if (!sub) {
      const created = { scope, id, joined: false, acked: false, retries: 0, ack: undefined };
      this.#subs.set(key, created);
      if (this.#authenticated) this.#sendSubscribe(created);
    }
    return promise;
  }

  /** Leaves a room and forgets it; settles on unsubscribe_ack / _error (at once when offline). */
  unsubscribe(scope, id) {
    const key = roomKey(scope, id);
    this.#subs.delete(key);
    this.#cancel(`retry ${key}`);
    if (!this.#isOwnRoom(scope, id)) this.#tracker.forget(scope, id);
    if (!this.#authenticated) {
      const error = codedError(`unsubscribed from ${key} before it was joined`, 'unsubscribed');
      this.#settle('subscribe', key, error);
      return Promise.resolve(undefined);
    }
    const promise = this.#wait('unsubscribe', key);
    this.#send({ type: 'unsubscribe', payload: { scope, id } });
    return promise;
  }

  /** Calls `handler(frame)` for event frames of `eventType` (exact, `prefix:*` or `*`). */
  on(eventType, handler) {
    return this.#addKeyed(this.#listeners.event, eventType, handler);
  }

  /** Calls `handler(frame)` for event frames sent to one room. */
  onRoom(scope, id, handler) {
    return this.#addKeyed(this.#listeners.room, roomKey(scope, id), handler);
  }

  onStateChange(handler) {
    return this.#add(this.#listeners.state, handler);
  }

  onError(handler) {
    return this.#add(this.#listeners.error, handler);
  }

  onGap(handler) {
    return this.#add(this.#listeners.gap, handler);
  }

  onRecoveryFailed(handler) {
    return this.#add(this.#listeners.recoveryFailed, handler);
  }

  // --- connection lifecycle ---

  async #openSocket(state) {
    this.#setState(state);
    const generation = ++this.#generation;
    let token;
    try {
      token = await this.#fetchToken();
    } catch (err) {
      if (generation !== this.#generation) return;
      this.#emitError(tokenError(err));
      return this.#reconnectLater();
    }
    if (generation !== this.#generation) return; // close() was called meanwhile
    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (err) {
      const message = `cannot open a WebSocket: ${err?.message ?? err}`;
      this.#emitError(codedError(message, 'socket_failed', { cause: err }));
      return this.#reconnectLater();
    }
    this.#ws = ws;
    ws.onopen = () => ws === this.#ws && this.#sendAuth(token);
    ws.onmessage = (event) => ws === this.#ws && this.#receive(event.data);
    ws.onclose = (event) => ws === this.#ws && this.#socketClosed(event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
    this.#armResponseTimer('no auth_ack');
  }

  async #fetchToken() {
    const token = await this.#getToken();
    if (typeof token !== 'string' || token === '') throw new TypeError('no token');
    const sub = jwtClaims(token)?.sub;
    if (typeof sub === 'string' && sub !== this.#userId) {
      // Positions in another user's room mean nothing for this one.
      if (this.#userId !== undefined) this.#tracker.forget('user', this.#userId);
      this.#userId = sub;
    }
    this.#token = token;
    return token;
  }

  /** The first frame: the token, and where this client was in its own workspace and user rooms. */
  #sendAuth(token) {
    this.#tracker.retain(this.#resumableRooms());
    const since = {};
    const workspace = this.#tracker.position('workspace', this.#options.workspaceId);
    const user = this.#userId !== undefined && this.#tracker.position('user', this.#userId);
    if (workspace) since.workspace = workspace;
    if (user) since.user = user;
    this.#send({ type: 'auth', payload: Object.keys(since).length ? { token, since } : { token } });
  }

  #resumableRooms() {
    const own = [roomKey('workspace', this.#options.workspaceId), roomKey('user', this.#userId)];
    return [...own, ...this.#subs.keys()];
  }

  #onAuthAck(payload) {
    if (this.#authenticated) return this.#scheduleRefresh(payload.exp); // a refresh was accepted
    this.#authenticated = true;
    // Backoff starts over once a connection has stayed up (a full ping interval).
    this.#schedule('stable', this.#options.pingIntervalMs, () => (this.#attempt = 0));
    this.#setState('open');
    this.#schedulePing();
    this.#resubscribeAll();
    this.#scheduleRefresh(payload.exp ?? jwtClaims(this.#token)?.exp);
  }

  #socketClosed(code, reason) {
    const wasOpen = this.#authenticated;
    this.#dropSocket();
    const action = closeAction(code);
    if (action === 'stop' || (action === 'refresh-token' && !this.#refreshable)) {
      return this.#shutDown({ code, reason });
    }
    // An expired token on a live connection: reconnect at once (getToken gives a fresh one).
    this.#reconnectLater(action === 'refresh-token' && wasOpen ? 0 : undefined);
  }

  /** Nothing heard in time: give the socket up and reconnect. */
  #abandon(reason) {
    this.#closeSocket(4000, reason);
    this.#reconnectLater();
  }

  #closeSocket(code, reason) {
    const ws = this.#ws;
    this.#dropSocket();
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
  }

  /** Forgets the current socket: its handlers, timers, joined rooms and pending unsubscribes. */
  #dropSocket() {
    const ws = this.#ws;
    // onerror stays a no-op: Node's ws package throws on an 'error' event nobody listens to.
    if (ws) ws.onopen = ws.onmessage = ws.onclose = null;
    this.#ws = null;
    this.#authenticated = false;
    for (const name of [...this.#timers.keys()]) if (name !== 'reconnect') this.#cancel(name);
    for (const sub of this.#subs.values()) sub.joined = false;
    // The rooms being left were left with the connection.
    for (const key of [...this.#waiting.unsubscribe.keys()]) this.#settle('unsubscribe', key);
  }

  #reconnectLater(delay) {
    const wait = delay ?? backoffDelay(this.#attempt++, this.#options.backoff, this.#random);
    this.#setState('reconnecting');
    this.#schedule('reconnect', wait, () => this.#openSocket('reconnecting'));
  }

  #shutDown(info) {
    this.#generation++;
    for (const name of [...this.#timers.keys()]) this.#cancel(name);
    const error = codedError('busbar client closed', 'closed', { closeCode: info.code });
    for (const key of [...this.#waiting.subscribe.keys()]) {
      if (!this.#subs.get(key)?.acked) this.#subs.delete(key); // never joined: not remembered
      this.#settle('subscribe', key, error);
    }
    for (const key of [...this.#waiting.unsubscribe.keys()]) this.#settle('unsubscribe', key);
    this.#setState('closed', info);
  }

  #setState(state, info) {
    if (state === this.#state) return;
    this.#state = state;
    this.#call(this.#listeners.state, [state, info]);
  }

  // --- timers: pings, response deadline, token refresh ---

  #schedulePing() {
    this.#schedule('ping', this.#options.pingIntervalMs, () => {
      this.#send({ type: 'ping' });
      if (!this.#timers.has('response')) this.#armResponseTimer('no pong');
      this.#schedulePing();
    });
  }

  #armResponseTimer(reason) {
    this.#schedule('response', this.#options.pongTimeoutMs, () => this.#abandon(reason));
  }

  #scheduleRefresh(exp) {
    const delay = this.#refreshable ? refreshDelay(exp, this.#now()) : undefined;
    if (delay === undefined) return this.#cancel('refresh');
    this.#schedule('refresh', delay, () => this.#refreshToken());
  }

  /** Sends a fresh token on the live connection (answered by auth_ack with the new exp). */
  async #refreshToken() {
    const generation = this.#generation;
    try {
      const token = await this.#fetchToken();
      if (generation === this.#generation && this.#authenticated) this.#send({ type: 'auth', payload: { token } });
    } catch (err) {
      if (generation === this.#generation) this.#emitError(tokenError(err));
    }
  }

  #schedule(name, ms, fn) {
    this.#cancel(name);
    this.#timers.set(name, this.#setTimeout(() => {
      this.#timers.delete(name);
      fn();
    }, ms));
  }

  #cancel(name) {
    if (!this.#timers.has(name)) return;
    this.#clearTimeout(this.#timers.get(name));
    this.#timers.delete(name);
  }

  // --- frames in ---

  #receive(data) {
    this.#cancel('response'); // any frame proves the connection alive
    let frame;
    try {
      frame = JSON.parse(typeof data === 'string' ? data : String(data));
    } catch {
      return; // not JSON: ignored, as the protocol says
    }
    if (!frame || typeof frame.type !== 'string') return;
    const payload = frame.payload ?? {};
    switch (frame.type) {
      case 'auth_ack': return this.#onAuthAck(payload);
      case 'auth_error': return this.#emitError(codedError(`token refresh refused: ${payload.error}`, payload.error));
      case 'error': return this.#emitError(codedError(payload.message ?? payload.code, payload.code));
      case 'subscribe_ack': return this.#onSubscribeAck(payload);
      case 'subscribe_error': return this.#onSubscribeError(payload);
      case 'unsubscribe_ack': return this.#onUnsubscribeReply(payload);
      case 'unsubscribe_error': return this.#onUnsubscribeReply(payload);
      case 'pong': return;
      case 'skip': return void this.#track(frame); // a position, no event
      default: if (this.#track(frame)) this.#dispatch(frame);
    }
  }

  /** Records a frame's position; reports gaps and new epochs; false for duplicates. */
  #track(frame) {
    if (frame.scope === 'user' && typeof frame.scope_id === 'string') this.#userId ??= frame.scope_id;
    const { deliver, gap, newEpoch } = this.#tracker.observe(frame);
    const room = { scope: frame.scope, id: frame.scope_id ?? '' };
    if (gap) this.#call(this.#listeners.gap, [room, gap]);
    if (newEpoch) this.#call(this.#listeners.recoveryFailed, [room]);
    return deliver;
  }

  #dispatch(frame) {
    for (const [pattern, handlers] of this.#listeners.event) {
      if (matchesType(pattern, frame.type)) this.#call(handlers, [frame]);
    }
    if (typeof frame.scope !== 'string') return;
    const room = this.#listeners.room.get(roomKey(frame.scope, frame.scope_id));
    if (room) this.#call(room, [frame]);
  }

  // --- subscriptions ---

  #isOwnRoom(scope, id) {
    return (scope === 'workspace' && id === this.#options.workspaceId) || (scope === 'user' && id === this.#userId);
  }

  /** After auth_ack: every remembered room again, from its last position (own rooms: by auth). */
  #resubscribeAll() {
    for (const sub of this.#subs.values()) {
      const own = this.#isOwnRoom(sub.scope, sub.id);
      if (own && !this.#waiting.subscribe.has(roomKey(sub.scope, sub.id))) sub.joined = true;
      else this.#sendSubscribe(sub);
    }
  }

  #sendSubscribe(sub) {
    const since = !this.#isOwnRoom(sub.scope, sub.id) && this.#tracker.position(sub.scope, sub.id);
    const payload = since ? { scope: sub.scope, id: sub.id, since } : { scope: sub.scope, id: sub.id };
    this.#send({ type: 'subscribe', payload });
  }

  #onSubscribeAck(payload) {
    const { scope, id, epoch, offset, recovered } = payload;
    if (scope === 'user') this.#userId ??= id;
    if (typeof epoch === 'string' && typeof offset === 'number') {
      // recovered: true keeps our position (the missed frames follow); otherwise start at the room's.
      if (recovered !== true) this.#tracker.set(scope, id, { epoch, offset });
      if (recovered === false) this.#call(this.#listeners.recoveryFailed, [{ scope, id }]);
    }
    const key = roomKey(scope, id);
    const sub = this.#subs.get(key);
    if (sub) Object.assign(sub, { joined: true, acked: true, retries: 0, ack: payload });
    this.#settle('subscribe', key, undefined, payload);
  }

  #onSubscribeError(payload) {
    const { scope, id, error: code } = payload;
    const key = roomKey(scope, id);
    const error = codedError(`subscribe to ${key} refused: ${code}`, code, { room: { scope, id } });
    const someoneWaited = this.#settle('subscribe', key, error);
    const sub = this.#subs.get(key);
    if (!sub) return;
    if (sub.acked && TRANSIENT_ERRORS.has(code)) {
      const delay = backoffDelay(sub.retries++, this.#options.backoff, this.#random);
      this.#schedule(`retry ${key}`, delay, () => this.#subs.get(key) === sub && this.#sendSubscribe(sub));
      return;
    }
    this.#subs.delete(key);
    this.#tracker.forget(scope, id);
    if (!someoneWaited) this.#emitError(error);
  }

  #onUnsubscribeReply(payload) {
    const { scope, id, error: code } = payload;
    const error = code && codedError(`unsubscribe from ${roomKey(scope, id)} refused: ${code}`, code);
    this.#settle('unsubscribe', roomKey(scope, id), error, payload);
  }

  #wait(kind, key) {
    return new Promise((resolve, reject) => {
      const waiting = this.#waiting[kind];
      waiting.set(key, [...(waiting.get(key) ?? []), { resolve, reject }]);
    });
  }

  /** Settles every promise waiting on `kind` for a room; returns whether there were any. */
  #settle(kind, key, error, value) {
    const waiters = this.#waiting[kind].get(key) ?? [];
    this.#waiting[kind].delete(key);
    for (const { resolve, reject } of waiters) error ? reject(error) : resolve(value);
    return waiters.length > 0;
  }

  // --- frames out, handlers ---

  #send(frame) {
    if (this.#ws?.readyState === OPEN) this.#ws.send(JSON.stringify(frame));
  }

  #add(set, handler) {
    set.add(handler);
    return () => set.delete(handler);
  }

  #addKeyed(map, key, handler) {
    if (!map.has(key)) map.set(key, new Set());
    const set = map.get(key);
    set.add(handler);
    return () => {
      set.delete(handler);
      if (set.size === 0 && map.get(key) === set) map.delete(key);
    };
  }

  /** Calls each handler; a throwing handler is reported to onError (or the console). */
  #call(handlers, args) {
    for (const handler of [...handlers]) {
      try {
        handler(...args);
      } catch (err) {
        if (handlers !== this.#listeners.error && this.#listeners.error.size > 0) this.#emitError(err);
        else console.error('busbar client: a handler threw', err);
      }
    }
  }

  #emitError(error) {
    this.#call(this.#listeners.error, [error]);
  }
}
