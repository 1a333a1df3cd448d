"""busbar: helpers for busbar listener plugins written in Python.

A plugin module, `app.py`, defines two functions, `subscriptions()` and `handle(event)`;
`handle` returns a list of actions (built with `send`, `forward` and `follow_up`), raises
`Err(message)` to fail the call, and any other exception traps (busbar contains it and replaces
the instance). Event fields are snake_case (`event_type`, `workspace_id`, `task_id`...);
`payload` is JSON text. `busbar plugin build` adds the component's exports
(`busbar_exports.py`), which call the two functions.

busbar lends `handle` the event for the call (contract 0.2.0): a resource whose fields it
copies into the plugin one by one, when asked. The exports give `handle` an `Event` that reads
each field on first access and keeps it for the rest of the call, so a field the plugin never
reads never crosses. The event ends with the call: keep its values, not the event.
"""

import json

from componentize_py_types import Err  # noqa: F401  (re-exported for plugins)
from wit_world.imports import config as _config
from wit_world.imports import kv as _kv
from wit_world.imports import log as _log
from wit_world.imports.types import (
    Action_Publish,
    Action_Send,
    FollowUp,
    Level,
    Message,
    Scope,
    ScopeKind,
    Target_Everyone,
    Target_Scope,
    Target_User,
    Target_Workspace,
    UserTarget,
)


class _Field:
    """One field of the lent event: read through the resource's method on first access, then
    kept in the instance's `__dict__`, which Python looks in first from then on."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, event, owner=None):
        if event is None:
            return self
        lent = event._lent
        if lent is None:
            raise RuntimeError(f"event.{self.name} read after the call: keep values, not the event")
        value = getattr(lent, self.name)()
        event.__dict__[self.name] = value
        return value


class Event:
    """The event being handled, each field read from busbar on first access and kept for the call
    (`event_type`, `workspace_id`, `actor_type`, `actor_id`, `payload` as JSON text, `task_id`
    and `chat_session_id` or None, `published_at_ms`, `id`). Given to `handle` by the exports;
    valid during that call only."""

    id = _Field()
    event_type = _Field()
    workspace_id = _Field()
    actor_type = _Field()
    actor_id = _Field()
    payload = _Field()
    task_id = _Field()
    chat_session_id = _Field()
    published_at_ms = _Field()

    def __init__(self, lent):
        self._lent = lent

    def _end(self):
        """The call is over: the lent event may not be used any more."""
        self._lent = None

    def __repr__(self):
        read = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "_lent")
        return f"Event({read})"


def _json(payload):
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


class log:
    """Log lines, under the plugin's name in busbar's log."""

    @staticmethod
    def debug(message):
        _log.write(Level.DEBUG, str(message))

    @staticmethod
    def info(message):
        _log.write(Level.INFO, str(message))

    @staticmethod
    def warn(message):
        _log.write(Level.WARN, str(message))

    @staticmethod
    def error(message):
        _log.write(Level.ERROR, str(message))


class config:
    """The `[config]` values of the plugin's manifest; `get` returns None when unset."""

    @staticmethod
    def get(key):
        return _config.get(key)

    @staticmethod
    def keys():
        return _config.keys()


class kv:
    """The plugin's private key-value store, kept by busbar across instances and reloads."""

    @staticmethod
    def get(key):
        return _kv.get(key)

    @staticmethod
    def set(key, value: bytes):
        _kv.set(key, value)

    @staticmethod
    def delete(key):
        return _kv.delete(key)

    @staticmethod
    def get_text(key):
        value = _kv.get(key)
        return None if value is None else bytes(value).decode()

    @staticmethod
    def set_text(key, text):
        _kv.set(key, text.encode())


class target:
    """Who receives a message."""

    @staticmethod
    def workspace(id):
        return Target_Workspace(id)

    @staticmethod
    def user(id, except_workspace=None):
        return Target_User(UserTarget(id, except_workspace))

    @staticmethod
    def task(id):
        return Target_Scope(Scope(ScopeKind.TASK, id))

    @staticmethod
    def chat(id):
        return Target_Scope(Scope(ScopeKind.CHAT, id))

    @staticmethod
    def everyone():
        return Target_Everyone()


def send(to, event_type, payload):
    """A message for realtime clients; `payload` is JSON text or a value to serialize."""
    return Action_Send(Message(to, event_type, _json(payload)))


def forward(event, to):
    """The event's own type and payload (byte for byte) to `to`."""
    return send(to, event.event_type, event.payload)


def forward_without(event, to, keys):
    """Like `forward`, without the top-level `keys` of an object payload (byte for byte when
    none of them is there)."""
    payload = json.loads(event.payload)
    if not isinstance(payload, dict) or not any(k in payload for k in keys):
        return forward(event, to)
    for key in keys:
        payload.pop(key, None)
    return send(to, event.event_type, payload)


def follow_up(event, event_type, payload):
    """A follow-up event in the same workspace, by the same actor, same task and chat."""
    return Action_Publish(
        FollowUp(
            event_type,
            event.workspace_id,
            event.actor_type,
            event.actor_id,
            _json(payload),
            event.task_id,
            event.chat_session_id,
        )
    )


def payload_of(event):
    """The event's payload, parsed."""
    return json.loads(event.payload)
