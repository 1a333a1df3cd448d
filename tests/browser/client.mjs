// The browser client library (clients/js) in a page of an application on its own origin, in
// Chromium, against real busbar servers: it gets the events of its rooms and no others; it
// survives a restart of a single node (and says it could not recover the rooms), and, with the
// Redis relay, a restart of its node, resuming without a gap; and when its token expires
// (close 4501) it fetches a new one and carries on.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { Busbar, browser, check, env, freePort, run, sleep, token, until } from './harness.mjs';

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>busbar client test</title>
<link rel="icon" href="data:,">
<script type="module" src="/page.js"></script>`;

// What the application's page does: one client, every frame recorded, the connection's closes too.
const SCRIPT = `
import { BusbarClient } from '/client/index.js';
const params = new URLSearchParams(location.search);
Object.assign(window, { received: [], states: [], recoveryFailed: [], gaps: [], errors: [], closes: [] });
class Recording extends WebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener('close', (event) => window.closes.push(event.code));
  }
}
const client = new BusbarClient({
  url: params.get('busbar'),
  workspaceId: 'ws-1',
  getToken: () => window.mintToken(),
  WebSocket: Recording,
  backoff: { initialMs: 100, maxMs: 1000 },
  onStateChange: (state) => window.states.push(state),
  onRecoveryFailed: (room) => window.recoveryFailed.push(room),
  onGap: (room, gap) => window.gaps.push({ room, gap }),
  onError: (error) => window.errors.push(String(error && error.message || error)),
});
client.on('*', (frame) => window.received.push(frame));
client.connect();
client.subscribe('task', 't-1').then(() => { window.subscribed = 'ok'; }, (error) => { window.subscribed = error.code || String(error); });
`;

/** The application: its page and the library, on an origin of its own. */
async function application() {
  const src = join(env('REPO'), 'clients/js/src');
  const server = createServer((request, response) => {
    const path = new URL(request.url, 'http://x').pathname;
    const send = (type, body) => response.writeHead(200, { 'content-type': type }).end(body);
    if (path === '/page.html') return send('text/html', PAGE);
    if (path === '/page.js') return send('text/javascript', SCRIPT);
    const name = path.startsWith('/client/') && path.slice('/client/'.length);
    if (name && /^[a-z]+\.js$/.test(name)) return send('text/javascript', readFileSync(join(src, name)));
    response.writeHead(404).end();
  });
  const port = await freePort();
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { origin: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => server.close(resolve)) };
}

/** Opens the page against `busbar`; `tokens(n)` is the token for the n-th request (from 1). */
async function open(chrome, app, busbar, tokens = () => token('u1', ['ws-1'], { grants: { 'ws-1': { task: ['t-1'] } } })) {
  const page = await chrome.page();
  let asked = 0;
  await page.exposeFunction('mintToken', () => tokens(++asked));
  await page.goto(`${app.origin}/page.html?busbar=${encodeURIComponent(`ws://127.0.0.1:${busbar.port}/ws`)}`);
  await until('the task subscription', () => page.evaluate(() => window.subscribed));
  check((await page.evaluate(() => window.subscribed)) === 'ok', `subscribe: ${await page.evaluate(() => window.subscribed)}`);
  page.asked = () => asked;
  return page;
}

const received = (page) => page.evaluate(() => window.received);
const numbers = (frames, scope) => frames.filter((f) => !scope || f.scope === scope).map((f) => f.payload && f.payload.n).filter((n) => n !== undefined);

async function receives(page, n, scope = 'workspace') {
  await until(`frame n=${n} in the ${scope} room`, async () => numbers(await received(page), scope).includes(n));
}

const event = (n, extra = {}) => ({ type: 'issue:updated', workspace_id: 'ws-1', payload: { n }, ...extra });

async function redis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await sleep(300);
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill('SIGKILL') };
}

await run(async (cleanup) => {
  const app = await application();
  cleanup(app.close);
  const chrome = await browser();
  cleanup(chrome.close);
  const allowed = { BUSBAR_ALLOWED_ORIGINS: app.origin };

  // Its rooms and no others.
  const single = await new Busbar({ port: await freePort(), args: ['--ephemeral'], env: allowed }).start();
  cleanup(() => single.stop());
  const page = await open(chrome, app, single);
  await single.publish([
    event(1),
    { type: 'task:message', workspace_id: 'ws-1', task_id: 't-1', payload: { n: 2, task_id: 't-1' } },
    { type: 'issue:updated', workspace_id: 'ws-2', payload: { n: 3 } },
    { type: 'task:message', workspace_id: 'ws-1', task_id: 't-2', payload: { n: 4, task_id: 't-2' } },
  ]);
  await receives(page, 4);
  await receives(page, 2, 'task');
  const frames = await received(page);
  check(!numbers(frames).includes(3), 'an event of another workspace never arrives');
  check(!frames.some((f) => f.scope === 'task' && f.scope_id === 't-2'), 'a task room it did not join sends nothing');
  check(frames.every((f) => ['workspace:ws-1', 'user:u1', 'task:t-1'].includes(`${f.scope}:${f.scope_id}`)), `only its rooms: ${JSON.stringify(frames.map((f) => [f.scope, f.scope_id]))}`);

  // A single node restarts: a new epoch. The client reconnects, joins its rooms again, and
  // says it could not recover them.
  await single.restart();
  await until('the client reports the lost positions', async () => (await page.evaluate(() => window.recoveryFailed.length)) > 0);
  await until('the client is open again', async () => (await page.evaluate(() => window.states.at(-1))) === 'open');
  await until('the task room is joined again', async () => {
    await single.publish([{ type: 'task:message', workspace_id: 'ws-1', task_id: 't-1', payload: { n: 5, task_id: 't-1' } }]);
    return numbers(await received(page), 'task').includes(5);
  });

  // Several nodes: the client's node restarts while another publishes. The client resumes from
  // where it was, from the relay's history, without a gap.
  const store = await redis();
  cleanup(store.stop);
  const relayed = { ...allowed };
  const a = await new Busbar({ port: await freePort(), args: ['--redis-url', store.url], env: { ...relayed, BUSBAR_NODE_ID: 'a' } }).start();
  cleanup(() => a.stop());
  const b = await new Busbar({ port: await freePort(), args: ['--redis-url', store.url], env: { ...relayed, BUSBAR_NODE_ID: 'b' } }).start();
  cleanup(() => b.stop());
  const onA = await open(chrome, app, a);
  await b.publish([event(10)]);
  await receives(onA, 10);
  await a.stop();
  await b.publish([event(11), event(12), { type: 'task:message', workspace_id: 'ws-1', task_id: 't-1', payload: { n: 13, task_id: 't-1' } }]);
  await a.start();
  await receives(onA, 12);
  await receives(onA, 13, 'task');
  await b.publish([event(14)]);
  await receives(onA, 14);
  const resumed = numbers(await received(onA), 'workspace');
  check(JSON.stringify(resumed.filter((n) => n >= 10)) === JSON.stringify([10, 11, 12, 14]) || JSON.stringify(resumed.filter((n) => n >= 10 && n !== 13)) === JSON.stringify([10, 11, 12, 14]), `every frame once, in order: ${resumed}`);
  check((await onA.evaluate(() => window.gaps.length)) === 0, `no gap: ${JSON.stringify(await onA.evaluate(() => window.gaps))}`);
  check((await onA.evaluate(() => window.recoveryFailed.length)) === 0, `recovered: ${JSON.stringify(await onA.evaluate(() => window.recoveryFailed))}`);

  // The token expires (its refresh was refused: another user's token): 4501, then a new token
  // and a new connection.
  const expiring = await open(chrome, app, single, (n) =>
    n === 1 ? token('u1', ['ws-1'], { grants: { 'ws-1': { task: ['t-1'] } }, ttlSecs: 3 })
      : n === 2 ? token('someone-else', ['ws-1'], { ttlSecs: 600 })
        : token('u1', ['ws-1'], { grants: { 'ws-1': { task: ['t-1'] } }, ttlSecs: 600 }));
  await until('the expired connection closed with 4501', async () => (await expiring.evaluate(() => window.closes)).includes(4501), 20000);
  await until('a third token was asked for', async () => expiring.asked() >= 3);
  await until('open again', async () => (await expiring.evaluate(() => window.states.at(-1))) === 'open');
  await until('events flow again', async () => {
    await single.publish([event(20)]);
    return numbers(await received(expiring)).includes(20);
  });

  // Chromium itself logs each refused reconnect while a server is down: that is the network,
  // not the page. Anything else (an exception, a script error) fails the scenario.
  const refused = /^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws\?workspace_id=ws-1' failed: .*ERR_CONNECTION_REFUSED$/;
  for (const p of [page, onA, expiring]) {
    const errors = p.errors.filter((e) => !refused.test(e));
    check(errors.length === 0, `no console errors: ${errors}`);
  }
});
