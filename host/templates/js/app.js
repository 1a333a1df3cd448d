// {{name}}: a busbar listener plugin. It forwards `issue:*` events to their workspace, under a
// type prefixed with the `prefix` config value. `busbar plugin build` provides `busbar.js`.
import { config, send, target } from './busbar.js';

export function subscriptions() {
  return ['issue:*'];
}

export function handle(event) {
  const prefix = config.get('prefix') ?? '';
  return [send(target.workspace(event.workspaceId), prefix + event.eventType, event.payload)];
}
