"""The conformance plugin in Python: the same behaviour as the Rust reference
(plugins/rust/testing/conform), output compared byte for byte by tests/it/conformance.rs.
`busbar plugin build` puts the SDK (`busbar.py`) beside it."""

import json
import os
import socket

from busbar import Err, config, follow_up, forward, kv, log, payload_of, send, target


def attempt(f):
    try:
        f()
        return "allowed"
    except Exception:
        return "denied"


def subscriptions():
    return ["conf:*"]


def handle(event):
    kind = event.event_type
    if kind == "conf:echo":
        return [forward(event, target.everyone())]
    if kind == "conf:targets":
        targets = [
            target.workspace(event.workspace_id),
            target.user(event.actor_id, event.workspace_id),
            target.task(event.task_id or ""),
            target.chat(event.chat_session_id or ""),
            target.everyone(),
        ]
        return [send(to, "conf:target", '{"n":%d}' % n) for n, to in enumerate(targets)]
    if kind == "conf:follow":
        return [follow_up(event, "conf:echo", {"from": "follow"})]
    if kind == "conf:error":
        raise Err("requested error")
    if kind == "conf:trap":
        raise RuntimeError("requested trap")
    if kind == "conf:kv":
        count = int(kv.get_text("counter") or "0") + 1
        kv.set_text("counter", str(count))
        deleted = "true" if kv.delete("never-set") else "false"
        return [send(target.everyone(), "conf:kv", '{"count":%d,"deleted":%s}' % (count, deleted))]
    if kind == "conf:config":
        greeting = config.get("greeting") or ""
        missing = "true" if config.get("missing") is None else "false"
        text = json.dumps(greeting, ensure_ascii=False)
        return [send(target.everyone(), "conf:config", '{"greeting":%s,"missing":%s}' % (text, missing))]
    if kind == "conf:parse":
        payload = payload_of(event)
        name = payload.get("name") if isinstance(payload, dict) else None
        name = name if isinstance(name, str) else "nobody"
        return [send(target.everyone(), "conf:parse", '{"hello":%s}' % json.dumps(name, ensure_ascii=False))]
    if kind == "conf:sandbox":
        file = attempt(lambda: open("/etc/passwd").read())
        env = "present" if os.environ.get("HOME") is not None else "absent"
        network = attempt(lambda: socket.create_connection(("127.0.0.1", 80), timeout=1))
        return [send(target.everyone(), "conf:sandbox", '{"file":"%s","env":"%s","network":"%s"}' % (file, env, network))]
    if kind == "conf:log":
        log.info("conformance log line")
        return []
    return []
