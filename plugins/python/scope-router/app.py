"""Routes `task:*` events to the task scope and `chat:*` events to the chat scope, using the
event's routing hints. The Python twin of plugins/rust/examples/scope-router."""

from busbar import forward_without, log, target

# Keys for the server only, which must not reach clients.
INTERNAL = {"task:failed": ["error"]}


def subscriptions():
    return ["task:*", "chat:*"]


def handle(event):
    is_task = event.event_type.startswith("task:")
    scope_id = event.task_id if is_task else event.chat_session_id
    if scope_id is None:
        log.debug(f"{event.event_type} {event.id} has no scope id")
        return []
    to = target.task(scope_id) if is_task else target.chat(scope_id)
    return [forward_without(event, to, INTERNAL.get(event.event_type, []))]
