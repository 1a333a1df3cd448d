"""On `comment:created`, publishes an `inbox:new` follow-up for every `@user` the comment
mentions, once per comment even if the event comes again (a bounded record in the kv store).
The Python twin of plugins/rust/examples/mention-notifier."""

import json

from busbar import follow_up, kv, payload_of

REMEMBERED = 512


def is_handle_char(c):
    return c.isalnum() or c in "_-."


def mentions(text):
    """The distinct `@handles` in `text`, in order of first appearance."""
    found = []
    for at, c in enumerate(text):
        if c != "@" or (at > 0 and is_handle_char(text[at - 1])):
            continue
        end = at + 1
        while end < len(text) and is_handle_char(text[end]):
            end += 1
        handle = text[at + 1 : end].rstrip(".")
        if handle and handle not in found:
            found.append(handle)
    return found


def remember(key):
    order = json.loads(kv.get_text("order") or "[]")
    order.append(key)
    while len(order) > REMEMBERED:
        kv.delete(order.pop(0))
    kv.set_text(key, "1")
    kv.set_text("order", json.dumps(order, separators=(",", ":"), ensure_ascii=False))


def subscriptions():
    return ["comment:created"]


def handle(event):
    created = payload_of(event)
    comment = created["comment"]
    key = f"comment:{comment['id']}"
    if kv.get(key) is not None:
        return []
    actions = [
        follow_up(
            event,
            "inbox:new",
            {
                "item": {
                    "type": "mention",
                    "recipient_id": user,
                    "comment_id": comment["id"],
                    "issue_id": comment.get("issue_id", ""),
                    "issue_title": created.get("issue_title", ""),
                }
            },
        )
        for user in mentions(comment["content"])
        if user != event.actor_id
    ]
    remember(key)
    return actions
