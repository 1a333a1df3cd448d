// The Node.js peer of `busbar bench fanout` (see host/src/cli/bench/servers.rs, which installs
// npm's `ws` beside this script and runs it): every WebSocket connection in one broadcast set,
// no rooms, no auth, no queue bounds. It answers the load generator exactly as busbar does:
// `{"type":"auth_ack"}` on connect, and `POST /v1/events` (a JSON array of events) sends each
// event to every connection as a frame of the same shape and size as busbar's, encoded once.
// It must stay the plain way to write this with `ws` (the broadcast of ws's README), not a
// tuned server: it is a point of comparison.

import http from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import { WebSocketServer, WebSocket } from 'ws';

const epoch = randomBytes(6).toString('hex');
let seq = 0;

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/v1/events') {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    let events;
    try {
      events = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (!Array.isArray(events)) events = [events];
    for (const event of events) {
      const workspace = event.workspace_id ?? '';
      const frame = Buffer.from(JSON.stringify({
        type: event.type,
        payload: event.payload ?? {},
        actor_id: '',
        actor_type: '',
        event_id: randomUUID(),
        workspace_id: workspace,
        scope: 'workspace',
        scope_id: workspace,
        epoch,
        seq: ++seq,
      }));
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(frame, { binary: false });
      }
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ accepted: events.length }));
  });
});

const wss = new WebSocketServer({ server, path: '/ws', maxPayload: 64 << 10 });
wss.on('connection', (socket) => {
  socket.on('error', () => {});
  socket.send('{"type":"auth_ack"}');
});

const listen = (process.argv[2] ?? '127.0.0.1:0').split(':');
server.listen(Number(listen[1]), listen[0], () => {
  console.error(`node ws listening on http://${listen[0]}:${server.address().port}`);
});
