// BusbarClient driven through a fake WebSocket (the test plays the server) and fake timers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BusbarClient } from '../src/index.js';

// --- fakes ---

/** A WebSocket the test drives: open(), receive(frame), serverClose(code); `sent` holds frames. */
class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.constructor.instances.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(data));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
    // A real socket reports its close later: the client must have let go of it by then.
    queueMicrotask(() => this.onclose?.({ code: 1006, reason: '' }));
  }

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame) {
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }

  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  sentOfType(type) {
    return this.sent.filter((frame) => frame.type === type);
  }
}

/** Timers that run only when the test advances time. */
class FakeClock {
  time = 1_700_000_000_000;
  timers = new Map();
  nextId = 1;
  setTimeout = (fn, ms) => {
    this.timers.set(this.nextId, { at: this.time + ms, fn, ms });
    return this.nextId++;
  };
  clearTimeout = (id) => this.timers.delete(id);
  now = () => this.time;

  pendingDelays() {
    return [...this.timers.values()].map((timer) => timer.ms).sort((a, b) => a - b);
  }

  /** Moves time on by `ms`, running the timers due on the way and the promises they start. */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      const [id, due] = [...this.timers].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0] ?? [];
      if (!due) break;
      this.timers.delete(id);
      this.time = due.at;
      due.fn();
      await settle();
    }
    this.time = end;
    await settle();
  }
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

const jwt = (claims) => ['{"alg":"HS256"}', JSON.stringify(claims)].map((part) => Buffer.from(part).toString('base64url')).join('.') + '.sig';

/** A client on fake sockets and timers, with every callback recorded in `seen`. */
function setup(options = {}) {
  const clock = new FakeClock();
  const Socket = class extends FakeWebSocket {
    static instances = [];
  };
  const seen = { states: [], errors: [], gaps: [], recoveryFailed: [] };
  const client = new BusbarClient({
    url: 'wss://bus.example/ws',
    workspaceId: 'ws-1',
    token: 'tok-1',
    WebSocket: Socket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 0.5, // no jitter: exact delays
    onStateChange: (state) => seen.states.push(state),
    onError: (error) => seen.errors.push(error),
    onGap: (room, gap) => seen.gaps.push({ room, gap }),
    onRecoveryFailed: (room) => seen.recoveryFailed.push(room),
    ...options,
  });
  const socket = () => Socket.instances.at(-1);
  const sockets = () => Socket.instances.length;
  /** Lets the client fetch its token and open a socket, then opens it (and acks its auth). */
  const accept = async ({ ack = true } = {}) => {
    await settle();
    socket().open();
    if (ack) socket().receive({ type: 'auth_ack' });
    return socket();
  };
  return { client, clock, seen, socket, sockets, accept };
}

const event = (seq, extra = {}) => ({
  type: 'task:updated', payload: {}, actor_id: 'u1', actor_type: 'member', event_id: `ev-${seq}`,
  workspace_id: 'ws-1', scope: 'task', scope_id: 't-1', epoch: 'e1', seq, ...extra,
});

// --- connecting ---

test('connects with workspace_id in the URL and the token only in the first, auth, frame', async () => {
  const { client, seen, socket, accept } = setup();
  client.connect();
  assert.equal(client.state, 'connecting');
  const ws = await accept({ ack: false });
  assert.equal(ws.url, 'wss://bus.example/ws?workspace_id=ws-1');
  assert.ok(!ws.url.includes('tok-1'));
  assert.deepEqual(ws.sent, [{ type: 'auth', payload: { token: 'tok-1' } }]);
  ws.receive({ type: 'auth_ack' });
  assert.equal(client.state, 'open');
  assert.deepEqual(seen.states, ['connecting', 'open']);
});

test('an http URL becomes ws; url, workspaceId, a token and a WebSocket are required', async () => {
  const { client, accept } = setup({ url: 'http://localhost:8080/ws?x=1' });
  client.connect();
  assert.equal((await accept()).url, 'ws://localhost:8080/ws?x=1&workspace_id=ws-1');
  const WebSocket = FakeWebSocket;
  assert.throws(() => new BusbarClient({ workspaceId: 'w', token: 't', WebSocket }), TypeError);
  assert.throws(() => new BusbarClient({ url: 'ws://h/ws', token: 't', WebSocket }), TypeError);
  assert.throws(() => new BusbarClient({ url: 'ws://h/ws', workspaceId: 'w', WebSocket }), TypeError);
  assert.throws(() => new BusbarClient({ url: 'ws://h/ws', workspaceId: 'w', token: 't', WebSocket: 'nope' }), TypeError);
});

// --- subscriptions ---

test('subscribe resolves on subscribe_ack and rejects with the error code', async () => {
  const { client, socket, accept } = setup();
  client.connect();
  await accept();
  const ok = client.subscribe('task', 't-1');
  const refused = client.subscribe('chat', 'c-9');
  assert.deepEqual(socket().sentOfType('subscribe').map((f) => f.payload), [{ scope: 'task', id: 't-1' }, { scope: 'chat', id: 'c-9' }]);
  const ack = { scope: 'task', id: 't-1', workspace_id: 'ws-1', epoch: 'e1', offset: 4 };
  socket().receive({ type: 'subscribe_ack', payload: ack });
  socket().receive({ type: 'subscribe_error', payload: { scope: 'chat', id: 'c-9', error: 'forbidden' } });
  assert.deepEqual(await ok, ack);
  await assert.rejects(refused, (error) => error.code === 'forbidden');
  assert.deepEqual(await client.subscribe('task', 't-1'), ack, 'already joined: no new frame');
  assert.equal(socket().sentOfType('subscribe').length, 2);
});

test('a subscribe made before connecting is sent after auth_ack', async () => {
  const { client, socket, accept } = setup();
  const joined = client.subscribe('task', 't-1');
  client.connect();
  const ws = await accept({ ack: false });
  assert.deepEqual(ws.sent.map((f) => f.type), ['auth'], 'nothing before auth_ack');
  ws.receive({ type: 'auth_ack' });
  assert.deepEqual(ws.sent.at(-1), { type: 'subscribe', payload: { scope: 'task', id: 't-1' } });
  ws.receive({ type: 'subscribe_ack', payload: { scope: 'task', id: 't-1', epoch: 'e1', offset: 0 } });
  assert.equal((await joined).offset, 0);
});

test('unsubscribe settles on its ack, and the room is not resubscribed after a reconnect', async () => {
  const { client, clock, socket, accept } = setup();
  client.connect();
  await accept();
  client.subscribe('task', 't-1');
  socket().receive({ type: 'subscribe_ack', payload: { scope: 'task', id: 't-1', epoch: 'e1', offset: 0 } });
  const left = client.unsubscribe('task', 't-1');
  assert.deepEqual(socket().sent.at(-1), { type: 'unsubscribe', payload: { scope: 'task', id: 't-1' } });
  socket().receive({ type: 'unsubscribe_ack', payload: { scope: 'task', id: 't-1' } });
  assert.deepEqual(await left, { scope: 'task', id: 't-1' });
  socket().serverClose(1001);
  await clock.advance(1000);
  await accept();
  assert.deepEqual(socket().sentOfType('subscribe'), []);
});

test('unsubscribe: an unsubscribe_error rejects; offline it resolves and drops a pending subscribe', async () => {
  const { client, socket, accept } = setup();
  const pending = client.subscribe('chat', 'c-1');
  assert.equal(await client.unsubscribe('chat', 'c-1'), undefined);
  await assert.rejects(pending, (e) => e.code === 'unsubscribed');
  client.connect();
  const ws = await accept();
  assert.deepEqual(ws.sentOfType('subscribe'), [], 'forgotten');
  const refused = client.unsubscribe('task', '');
  socket().receive({ type: 'unsubscribe_error', payload: { scope: 'task', id: '', error: 'invalid payload' } });
  await assert.rejects(refused, (e) => e.code === 'invalid payload');
});

test('subscribing to its own workspace sends no position and is not resent after a reconnect', async () => {
  const { client, clock, socket, accept } = setup();
  client.connect();
  await accept();
  socket().receive(event(3, { scope: 'workspace', scope_id: 'ws-1', epoch: 'w' }));
  const joined = client.subscribe('workspace', 'ws-1');
  assert.deepEqual(socket().sent.at(-1), { type: 'subscribe', payload: { scope: 'workspace', id: 'ws-1' } });
  socket().receive({ type: 'subscribe_ack', payload: { scope: 'workspace', id: 'ws-1', epoch: 'w', offset: 3 } });
  await joined;
  socket().serverClose(1001);
  await clock.advance(1000);
  const ws = await accept();
  assert.deepEqual(ws.sent[0].payload.since, { workspace: { epoch: 'w', offset: 3 } });
  assert.deepEqual(ws.sentOfType('subscribe'), []);
  assert.equal((await client.subscribe('workspace', 'ws-1')).offset, 3, 'joined with the connection');
});

test('a remembered room refused with rate_limited on resubscribe is retried later', async () => {
  const { client, clock, socket, accept, seen } = setup();
  client.connect();
  await accept();
  client.subscribe('task', 't-1');
  socket().receive({ type: 'subscribe_ack', payload: { scope: 'task', id: 't-1', epoch: 'e1', offset: 0 } });
  socket().serverClose(1001);
  await clock.advance(1000);
  const ws = await accept();
  ws.receive({ type: 'subscribe_error', payload: { scope: 'task', id: 't-1', error: 'rate_limited' } });
  assert.equal(ws.sentOfType('subscribe').length, 1);
  await clock.advance(1000);
  assert.equal(ws.sentOfType('subscribe').length, 2);
  ws.receive({ type: 'subscribe_error', payload: { scope: 'task', id: 't-1', error: 'forbidden' } });
  assert.equal(seen.errors.at(-1).code, 'forbidden', 'a lasting refusal is reported and the room forgotten');
  await clock.advance(60_000);
  assert.equal(ws.sentOfType('subscribe').length, 2);
});

// --- reconnecting and resuming ---

test('reconnects with backoff and resumes every room from its last position', async () => {
  const { client, clock, seen, socket, sockets, accept } = setup();
  client.connect();
  await accept();
  client.subscribe('task', 't-1');
  socket().receive({ type: 'subscribe_ack', payload: { scope: 'task', id: 't-1', epoch: 'e1', offset: 4 } });
  socket().receive(event(10, { type: 'issue:created', scope: 'workspace', scope_id: 'ws-1', epoch: 'w' }));
  socket().receive(event(3, { type: 'inbox:new', scope: 'user', scope_id: 'u7', epoch: 'u' }));
  socket().receive(event(5));

  socket().serverClose(1001);
  assert.equal(client.state, 'reconnecting');
  await clock.advance(999);
  assert.equal(sockets(), 1);
  await clock.advance(1);
  const ws = await accept({ ack: false });
  assert.equal(sockets(), 2);
  assert.deepEqual(ws.sent[0], {
    type: 'auth',
    payload: { token: 'tok-1', since: { workspace: { epoch: 'w', offset: 10 }, user: { epoch: 'u', offset: 3 } } },
  });
  ws.receive({ type: 'auth_ack' });
  assert.deepEqual(ws.sentOfType('subscribe'), [{ type: 'subscribe', payload: { scope: 'task', id: 't-1', since: { epoch: 'e1', offset: 5 } } }]);

  // The server could not fill the gap: the app is told, and live frames go on from the ack's offset.
  ws.receive({ type: 'subscribe_ack', payload: { scope: 'task', id: 't-1', epoch: 'e2', offset: 9, recovered: false } });
  assert.deepEqual(seen.recoveryFailed, [{ scope: 'task', id: 't-1' }]);
  const got = [];
  client.onRoom('task', 't-1', (frame) => got.push(frame.seq));
  ws.receive(event(10, { epoch: 'e2' }));
  assert.deepEqual(got, [10]);
  assert.deepEqual(seen.gaps, []);
  assert.deepEqual(seen.states, ['connecting', 'open', 'reconnecting', 'open']);
});

test('a recovered resume replays the missed frames with no gap reported', async () => {
  const { client, clock, seen, socket, accept } = setup();
  client.connect();
  await accept();
  client.subscribe('task', 't-1');
  socket().receive({ type: 'subscribe_ack', payload: { scope: 'task', id: 't-1', epoch: 'e1', offset: 4 } });
  socket().serverClose(1006);
  await clock.advance(1000);
  const ws = await accept();
  assert.deepEqual(ws.sentOfType('subscribe')[0].payload.since, { epoch: 'e1', offset: 4 });
  const got = [];
  client.on('task:*', (frame) => got.push(frame.seq));
  ws.receive({ type: 'subscribe_ack', payload: { scope: 'task', id: 't-1', epoch: 'e1', offset: 6, recovered: true } });
  for (const seq of [5, 6, 7]) ws.receive(event(seq));
  assert.deepEqual(got, [5, 6, 7]);
  assert.deepEqual([seen.gaps, seen.recoveryFailed], [[], []]);
});

test('own rooms resumed through auth report a failed recovery too', async () => {
  const { client, clock, seen, socket, accept } = setup();
  client.connect();
  await accept();
  socket().receive(event(10, { scope: 'workspace', scope_id: 'ws-1', epoch: 'w' }));
  socket().serverClose(1001);
  await clock.advance(1000);
  const ws = await accept();
  ws.receive({ type: 'subscribe_ack', payload: { scope: 'workspace', id: 'ws-1', epoch: 'w2', offset: 50, recovered: false } });
  assert.deepEqual(seen.recoveryFailed, [{ scope: 'workspace', id: 'ws-1' }]);
  ws.receive(event(51, { scope: 'workspace', scope_id: 'ws-1', epoch: 'w2' }));
  assert.deepEqual(seen.gaps, []);
});

test('backoff grows while connecting fails, and starts over once a connection stayed up', async () => {
  const { client, clock, socket, sockets, accept } = setup();
  client.connect();
  const delays = [];
  const dropAndWait = async () => {
    delays.push(clock.pendingDelays().at(-1));
    await clock.advance(delays.at(-1));
  };
  for (let i = 0; i < 4; i++) {
    await settle();
    socket().serverClose(1006);
    await dropAndWait();
  }
  assert.equal(sockets(), 5);
  await accept();
  socket().serverClose(4008); // evicted at once: still backing off
  await dropAndWait();
  await accept();
  await clock.advance(25_000); // up for a ping interval
  socket().serverClose(4008);
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000]);
  assert.deepEqual(clock.pendingDelays(), [1000]);
});

test('jitter comes from the injected random', async () => {
  const { client, clock, socket } = setup({ random: () => 0, backoff: { initialMs: 500, jitter: 0.5 } });
  client.connect();
  await settle();
  socket().serverClose(1006);
  assert.deepEqual(clock.pendingDelays(), [250]); // 500 * (1 - 0.5)
});

test('4429 (too many connections) is retried with backoff', async () => {
  const { client, clock, socket, sockets, accept } = setup();
  client.connect();
  const ws = await accept({ ack: false });
  ws.receive({ type: 'error', payload: { code: 'too_many_connections', message: 'too many' } });
  ws.serverClose(4429);
  assert.equal(client.state, 'reconnecting');
  await clock.advance(1000);
  assert.equal(sockets(), 2);
  assert.ok(socket() !== ws);
});

for (const [code, error] of [[4500, 'invalid_token'], [4502, 'bad_request'], [4503, 'forbidden_workspace']]) {
  test(`stops on close ${code}: no reconnect, pending subscribes rejected`, async () => {
    const { client, clock, seen, sockets, accept } = setup();
    client.connect();
    const pending = client.subscribe('task', 't-1');
    const ws = await accept({ ack: false });
    ws.receive({ type: 'error', payload: { code: error, message: 'refused' } });
    ws.serverClose(code);
    assert.equal(client.state, 'closed');
    await assert.rejects(pending, (e) => e.code === 'closed');
    assert.deepEqual(seen.errors.map((e) => e.code), [error]);
    await clock.advance(120_000);
    assert.equal(sockets(), 1);
    assert.deepEqual(clock.pendingDelays(), []);
  });
}

// --- tokens ---

test('4501: fetches a fresh token from getToken and reconnects at once', async () => {
  const tokens = ['tok-1', 'tok-2'];
  const { client, clock, socket, accept } = setup({ token: undefined, getToken: async () => tokens.shift() });
  client.connect();
  await accept();
  socket().serverClose(4501);
  assert.equal(client.state, 'reconnecting');
  await clock.advance(0);
  const ws = await accept({ ack: false });
  assert.deepEqual(ws.sent[0], { type: 'auth', payload: { token: 'tok-2' } });
  assert.deepEqual(tokens, []);
});

test('4501 with a fixed token stops: no fresh token can come', async () => {
  const { client, clock, sockets, socket, accept } = setup();
  client.connect();
  await accept();
  socket().serverClose(4501);
  assert.equal(client.state, 'closed');
  await clock.advance(60_000);
  assert.equal(sockets(), 1);
});

test('refreshes the token before exp with another auth frame on the same socket', async () => {
  const clockStart = 1_700_000_000;
  let calls = 0;
  const getToken = () => jwt({ sub: 'u7', exp: clockStart + 600 * ++calls });
  const { client, clock, seen, sockets, accept } = setup({ token: undefined, getToken, pingIntervalMs: 3_600_000 });
  client.connect();
  const ws = await accept();
  assert.deepEqual(clock.pendingDelays(), [540_000, 3_600_000, 3_600_000], 'refresh a minute before exp; ping; stable');
  await clock.advance(540_000);
  assert.equal(sockets(), 1);
  const refresh = ws.sentOfType('auth')[1];
  assert.equal(refresh.payload.token, jwt({ sub: 'u7', exp: clockStart + 1200 }));
  assert.equal(refresh.payload.since, undefined);
  ws.receive({ type: 'auth_ack', payload: { exp: clockStart + 1200 } });
  assert.ok(clock.pendingDelays().includes(600_000), 'next refresh a minute before the new exp');
  ws.receive({ type: 'auth_error', payload: { error: 'other_user' } });
  assert.equal(seen.errors.at(-1).code, 'other_user');
  assert.equal(client.state, 'open');
});

test('a getToken that fails is reported and retried with backoff', async () => {
  let fail = true;
  const getToken = async () => {
    if (fail) throw new Error('offline');
    return 'tok-9';
  };
  const { client, clock, seen, socket, sockets, accept } = setup({ token: undefined, getToken });
  client.connect();
  await settle();
  assert.equal(sockets(), 0);
  assert.equal(seen.errors[0].code, 'token_unavailable');
  fail = false;
  await clock.advance(1000);
  await accept();
  assert.equal(socket().sent[0].payload.token, 'tok-9');
  assert.equal(client.state, 'open');
});

// --- liveness ---

test('pings every pingIntervalMs; silence after a ping closes the socket and reconnects', async () => {
  const { client, clock, socket, sockets, accept } = setup();
  client.connect();
  const ws = await accept();
  await clock.advance(25_000);
  assert.deepEqual(ws.sent.at(-1), { type: 'ping' });
  ws.receive({ type: 'pong' });
  await clock.advance(10_000);
  assert.equal(ws.closedWith, undefined, 'the pong kept it');
  await clock.advance(15_000);
  assert.equal(ws.sentOfType('ping').length, 2);
  await clock.advance(10_000);
  assert.equal(ws.closedWith?.code, 4000);
  assert.equal(client.state, 'reconnecting');
  await clock.advance(1000);
  assert.equal(sockets(), 2);
  assert.notEqual(socket(), ws);
});

test('no auth_ack within pongTimeoutMs: gives the socket up and reconnects', async () => {
  const { client, clock, sockets, accept } = setup();
  client.connect();
  const ws = await accept({ ack: false });
  await clock.advance(10_000);
  assert.equal(ws.closedWith?.code, 4000);
  await clock.advance(1000);
  assert.equal(sockets(), 2);
});

// --- closing ---

test('close(): code 1000, no reconnect, pending subscribes rejected', async () => {
  const { client, clock, seen, sockets, accept } = setup();
  client.connect();
  const ws = await accept();
  const pending = client.subscribe('task', 't-1');
  client.close();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: 'client closed' });
  assert.equal(client.state, 'closed');
  await assert.rejects(pending, (e) => e.code === 'closed');
  await clock.advance(120_000);
  assert.equal(sockets(), 1);
  assert.deepEqual(seen.states, ['connecting', 'open', 'closed']);
});

test('close() while the token is being fetched opens no socket', async () => {
  let release;
  const { client, clock, sockets } = setup({ token: undefined, getToken: () => new Promise((r) => (release = r)) });
  client.connect();
  client.close();
  release('tok-1');
  await settle();
  await clock.advance(60_000);
  assert.equal(sockets(), 0);
  assert.equal(client.state, 'closed');
});

// --- handlers, gaps ---

test('dispatches to exact, prefix:* and * handlers and to room handlers; each returns its remover', async () => {
  const { client, socket, accept } = setup();
  client.connect();
  await accept();
  const got = [];
  client.on('task:updated', () => got.push('exact'));
  const offPrefix = client.on('task:*', () => got.push('prefix'));
  client.on('*', () => got.push('all'));
  client.on('chat:*', () => got.push('chat'));
  client.onRoom('task', 't-1', () => got.push('room'));
  client.onRoom('task', 't-2', () => got.push('other room'));
  socket().receive(event(1));
  assert.deepEqual(got.sort(), ['all', 'exact', 'prefix', 'room']);
  offPrefix();
  got.length = 0;
  socket().receive(event(2));
  assert.deepEqual(got.sort(), ['all', 'exact', 'room']);
  got.length = 0;
  for (const frame of [{ type: 'pong' }, 'not json', { type: 'subscribe_ack', payload: {} }]) socket().receive(frame);
  assert.deepEqual(got, [], 'control frames and garbage are not events');
});

test('gaps are reported, duplicates dropped, skip frames counted but not delivered', async () => {
  const { client, seen, socket, accept } = setup();
  client.connect();
  await accept();
  const got = [];
  client.on('*', (frame) => got.push(frame.seq));
  for (const seq of [1, 2, 2, 1, 5]) socket().receive(event(seq));
  socket().receive({ type: 'skip', scope: 'task', scope_id: 't-1', epoch: 'e1', seq: 6 });
  socket().receive(event(7));
  assert.deepEqual(got, [1, 2, 5, 7]);
  assert.deepEqual(seen.gaps, [{ room: { scope: 'task', id: 't-1' }, gap: { expected: 3, got: 5 } }]);
  socket().receive(event(1, { epoch: 'e2' }));
  assert.deepEqual(got.at(-1), 1);
  assert.deepEqual(seen.recoveryFailed, [{ scope: 'task', id: 't-1' }]);
});

test('a throwing handler is reported to onError and does not stop the others', async () => {
  const { client, seen, socket, accept } = setup();
  client.connect();
  await accept();
  let after = 0;
  client.on('*', () => {
    throw new Error('boom');
  });
  client.on('*', () => after++);
  socket().receive(event(1));
  assert.equal(after, 1);
  assert.equal(seen.errors[0].message, 'boom');
});
