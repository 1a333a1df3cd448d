"""Fails on every event with a raised exception: busbar must contain it like a Rust panic
(the call traps, the listeners after it run, the next call gets a fresh instance)."""


def subscriptions():
    return ["*"]


def handle(event):
    raise RuntimeError(f"failing on purpose: {event.event_type}")
