// The conformance plugin in JavaScript: the same behaviour as the Rust reference
// (plugins/rust/testing/conform), output compared byte for byte by tests/it/conformance.rs.
// `busbar plugin build` puts the SDK (`busbar.js`) beside it.
import { config, forward, followUp, kv, log, payloadOf, send, target } from './busbar.js';

export function subscriptions() {
  return ['conf:*'];
}

export function handle(event) {
  switch (event.eventType) {
    case 'conf:echo':
      return [forward(event, target.everyone())];
    case 'conf:targets':
      return [
        target.workspace(event.workspaceId),
        target.user(event.actorId, event.workspaceId),
        target.task(event.taskId ?? ''),
        target.chat(event.chatSessionId ?? ''),
        target.everyone(),
      ].map((to, n) => send(to, 'conf:target', `{"n":${n}}`));
    case 'conf:follow':
      return [followUp(event, 'conf:echo', { from: 'follow' })];
    case 'conf:error':
      throw 'requested error';
    case 'conf:trap':
      // JavaScript cannot trap on purpose: an escaping exception fails the call instead.
      throw new Error('requested trap');
    case 'conf:kv': {
      const count = Number(kv.getText('counter') ?? '0') + 1;
      kv.setText('counter', String(count));
      const deleted = kv.delete('never-set');
      return [send(target.everyone(), 'conf:kv', `{"count":${count},"deleted":${deleted}}`)];
    }
    case 'conf:config': {
      const greeting = config.get('greeting') ?? '';
      const missing = config.get('missing') === undefined;
      return [send(target.everyone(), 'conf:config', `{"greeting":${JSON.stringify(greeting)},"missing":${missing}}`)];
    }
    case 'conf:parse': {
      const payload = payloadOf(event);
      const name = typeof payload?.name === 'string' ? payload.name : 'nobody';
      return [send(target.everyone(), 'conf:parse', `{"hello":${JSON.stringify(name)}}`)];
    }
    case 'conf:sandbox': {
      // The JavaScript engine (StarlingMonkey) offers no file, environment or socket API, and
      // busbar builds plugins without its HTTP client: these attempts check that none of Node's
      // ways in (`require('fs')`, `process.env`, `WebSocket`) exists, so each fails here, inside
      // the plugin. The WASI layer underneath grants nothing either (the Rust, Python and Go
      // versions reach it with real calls). `fetch` exists but is not wired to anything:
      // calling it traps, which busbar contains like any trap.
      const attempt = (f) => { try { f(); return 'allowed'; } catch { return 'denied'; } };
      const file = attempt(() => globalThis.require('fs').readFileSync('/etc/passwd'));
      const env = globalThis.process?.env?.HOME !== undefined ? 'present' : 'absent';
      const network = attempt(() => new globalThis.WebSocket('ws://127.0.0.1/'));
      return [send(target.everyone(), 'conf:sandbox', `{"file":"${file}","env":"${env}","network":"${network}"}`)];
    }
    case 'conf:log':
      log.info('conformance log line');
      return [];
    default:
      return [];
  }
}
