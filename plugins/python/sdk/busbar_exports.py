"""The component's exports, put beside the plugin by `busbar plugin build` and named to
componentize-py as the app: `WitWorld` calls the plugin's module-level `subscriptions()` and
`handle(event)` in `app.py`. `handle` may return any iterable of actions, or None for none. An
`app.py` that defines `WitWorld` itself (written before busbar provided this) is used as is."""

import app
import wit_world


class WitWorld(wit_world.WitWorld):
    def subscriptions(self):
        return list(app.subscriptions())

    def handle(self, event):
        actions = app.handle(event)
        return [] if actions is None else list(actions)


if hasattr(app, "WitWorld"):
    WitWorld = app.WitWorld  # noqa: F811
