// busbar.js: helpers for busbar listener plugins written in JavaScript.
//
// A plugin module exports `subscriptions()` and `handle(event)`; `handle` returns a list of
// actions (built with `send`, `forward` and `followUp`) or throws to fail the call. Event fields
// are camelCase (`eventType`, `workspaceId`, `taskId`...); `payload` is JSON text.
//
// The event is lent to `handle` for the call (contract 0.2.0): a resource whose fields busbar
// copies into the plugin one by one, when asked. Importing this module turns each field into a
// property read on first access and kept on the event for the rest of the call, so a field the
// plugin never reads never crosses. The event ends with the call: keep its values, not the event.
import { Event } from 'busbar:plugin/types@0.2.0';
import { write } from 'busbar:plugin/log@0.2.0';
import { get as configGet, keys as configKeys } from 'busbar:plugin/config@0.2.0';
import { get as kvGet, set as kvSet, delete as kvDelete } from 'busbar:plugin/kv@0.2.0';

// The bindings give the lent event a method per field (`event.eventType()`); this puts a getter
// of the same name in its place, which calls the method once and keeps the value on the event.
const FIELDS = [
  'id', 'eventType', 'workspaceId', 'actorType', 'actorId', 'payload', 'taskId', 'chatSessionId', 'publishedAtMs',
];
for (const field of FIELDS) {
  const read = Event.prototype[field];
  Object.defineProperty(Event.prototype, field, {
    configurable: true,
    get() {
      const value = read.call(this);
      Object.defineProperty(this, field, { value, enumerable: true });
      return value;
    },
  });
}

/** Log lines, under the plugin's name in busbar's log. */
export const log = {
  trace: (message) => write('trace', String(message)),
  debug: (message) => write('debug', String(message)),
  info: (message) => write('info', String(message)),
  warn: (message) => write('warn', String(message)),
  error: (message) => write('error', String(message)),
};

/** The `[config]` values of the plugin's manifest. `get` returns undefined when unset. */
export const config = {
  get: (key) => configGet(key),
  keys: () => configKeys(),
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The plugin's private key-value store, kept by busbar across instances and reloads. */
export const kv = {
  get: (key) => kvGet(key),
  set: (key, bytes) => kvSet(key, bytes),
  delete: (key) => kvDelete(key),
  getText: (key) => {
    const bytes = kvGet(key);
    return bytes === undefined ? undefined : decoder.decode(bytes);
  },
  setText: (key, text) => kvSet(key, encoder.encode(text)),
};

/** Who receives a message. */
export const target = {
  workspace: (id) => ({ tag: 'workspace', val: id }),
  user: (id, exceptWorkspace) => ({ tag: 'user', val: { userId: id, excludeWorkspace: exceptWorkspace } }),
  task: (id) => ({ tag: 'scope', val: { kind: 'task', id } }),
  chat: (id) => ({ tag: 'scope', val: { kind: 'chat', id } }),
  everyone: () => ({ tag: 'everyone' }),
};

function json(payload) {
  return typeof payload === 'string' ? payload : JSON.stringify(payload);
}

/** A message for realtime clients; `payload` is JSON text or a value to serialize. */
export function send(to, eventType, payload) {
  return { tag: 'send', val: { target: to, eventType, payload: json(payload) } };
}

/** The event's own type and payload (byte for byte) to `to`. */
export function forward(event, to) {
  return send(to, event.eventType, event.payload);
}

/**
 * Like `forward`, without the top-level `keys` of an object payload (byte for byte when none of
 * them is there).
 */
export function forwardWithout(event, to, keys) {
  const payload = JSON.parse(event.payload);
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload) || !keys.some((k) => k in payload)) {
    return forward(event, to);
  }
  for (const key of keys) {
    delete payload[key];
  }
  return send(to, event.eventType, payload);
}

/** A follow-up event in the same workspace, by the same actor, with the same task and chat. */
export function followUp(event, eventType, payload) {
  return {
    tag: 'publish',
    val: {
      eventType,
      workspaceId: event.workspaceId,
      actorType: event.actorType,
      actorId: event.actorId,
      payload: json(payload),
      taskId: event.taskId,
      chatSessionId: event.chatSessionId,
    },
  };
}

/** The event's payload, parsed. */
export function payloadOf(event) {
  return JSON.parse(event.payload);
}
