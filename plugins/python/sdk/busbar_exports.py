"""The component's exports, put beside the plugin by `busbar plugin build` and named to
componentize-py as the app: `WitWorld` calls the plugin's module-level `subscriptions()` and
`handle(event)` in `app.py`. `handle` is given a `busbar.Event` over the event busbar lends for
the call, which ends with it; it may return any iterable of actions, or None for none. An
`app.py` that defines `WitWorld` itself (written before busbar provided this) is used as is, and
gets the lent event itself (`wit_world.imports.types.Event`, a method per field)."""

import app
import wit_world
from busbar import Event


class WitWorld(wit_world.WitWorld):
    def subscriptions(self):
        return list(app.subscriptions())

    def handle(self, event):
        event = Event(event)
        try:
            actions = app.handle(event)
            # Inside the call: a generator may still read the event.
            return [] if actions is None else list(actions)
        finally:
            event._end()


if hasattr(app, "WitWorld"):
    WitWorld = app.WitWorld  # noqa: F811
