// Fails on every event with an uncaught exception: busbar must contain it like a Rust panic
// (the call fails, the listeners after it run, the next call gets a working instance).
// It uses no helper, but imports the SDK for the event's fields as properties (`event.eventType`).
import './busbar.js';

export function subscriptions() {
  return ['*'];
}

export function handle(event) {
  throw new Error(`failing on purpose: ${event.eventType}`);
}
