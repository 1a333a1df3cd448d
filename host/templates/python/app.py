"""{{name}}: a busbar listener plugin. It forwards `issue:*` events to their workspace, under a
type prefixed with the `prefix` config value. `busbar plugin build` provides `busbar.py`."""

from busbar import config, send, target


def subscriptions():
    return ["issue:*"]


def handle(event):
    prefix = config.get("prefix") or ""
    return [send(target.workspace(event.workspace_id), prefix + event.event_type, event.payload)]
