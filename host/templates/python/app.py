"""{{name}}: a busbar listener plugin. It forwards `issue:*` events to their workspace, under a
type prefixed with the `prefix` config value. `busbar plugin build` provides `busbar.py`."""

import wit_world
from busbar import config, send, target


class WitWorld(wit_world.WitWorld):
    def subscriptions(self):
        return ["issue:*"]

    def handle(self, event):
        prefix = config.get("prefix") or ""
        return [send(target.workspace(event.workspace_id), prefix + event.event_type, event.payload)]
