// Routes `task:*` events to the task scope and `chat:*` events to the chat scope, using the
// event's routing hints. The JavaScript twin of plugins/rust/examples/scope-router.
import { forwardWithout, log, target } from './busbar.js';

// Keys for the server only, which must not reach clients.
const INTERNAL = { 'task:failed': ['error'] };

export function subscriptions() {
  return ['task:*', 'chat:*'];
}

export function handle(event) {
  const id = event.eventType.startsWith('task:') ? event.taskId : event.chatSessionId;
  if (id === undefined) {
    log.debug(`${event.eventType} ${event.id} has no scope id`);
    return [];
  }
  const to = event.eventType.startsWith('task:') ? target.task(id) : target.chat(id);
  return [forwardWithout(event, to, INTERNAL[event.eventType] ?? [])];
}
