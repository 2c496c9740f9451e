"""Raw HTTP calls of a running Gradio page's events, every one of them (public, private and
the examples'), as any client could send them: what tests/serve/test_security.py and
tests/studio/test_security.py aim at ``cnnkit serve`` and ``cnnkit studio``.

Two doors: the queue every event goes through (``POST /gradio_api/queue/join`` with the
event's ``fn_index``, answered on ``/gradio_api/queue/data``), and the named endpoints'
``POST /gradio_api/call/NAME``. Every wait is bounded (:data:`TIMEOUT_S`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

import httpx

TIMEOUT_S = 300  # one event's answer (a first prediction loads the model; the machine may be busy)
FILE_DATA = {"_type": "gradio.FileData"}  # the tag Gradio's client puts on a file payload


def events(url: str) -> list[dict[str, Any]]:
    """The page's events: ``{"fn_index", "api_name", "visibility", "inputs": [component types], "trigger"}``."""
    config = httpx.get(url + "config", timeout=60).json()
    types = {c["id"]: c["type"] for c in config["components"]}
    found = []
    for index, dep in enumerate(config["dependencies"]):
        targets = [t for t in dep.get("targets") or [] if t[0] is not None]
        found.append({"fn_index": dep.get("id", index), "api_name": dep.get("api_name"),
                      "visibility": dep.get("api_visibility"), "inputs": [types[i] for i in dep["inputs"]],
                      "trigger": targets[0][0] if targets else None, "kind": targets[0][1] if targets else None})
    return found


def queue_call(url: str, event: dict[str, Any], data: list[Any]) -> dict[str, Any]:
    """Run one event through the queue: its last message (``{"msg": "process_completed",
    "success": bool, "output": {...}}``), or the first error message."""
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": event["fn_index"], "session_hash": session, "trigger_id": event["trigger"],
            "event_data": None}
    with httpx.Client(timeout=TIMEOUT_S) as http:
        joined = http.post(url + "gradio_api/queue/join", json=body)
        if joined.status_code != 200:
            return {"msg": "refused", "success": False, "status": joined.status_code, "output": joined.json()}
        with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") in ("process_completed", "unexpected_error"):
                    return message
                if message.get("msg") == "process_streaming" and event["kind"] == "stream":
                    return message
    raise AssertionError(f"no answer to event {event}")


def named_call(url: str, name: str, data: list[Any]) -> tuple[str, Any]:
    """``POST /gradio_api/call/NAME``: ("complete", outputs) or ("error", the error's payload)."""
    with httpx.Client(timeout=TIMEOUT_S) as http:
        started = http.post(url + f"gradio_api/call/{name}", json={"data": data})
        started.raise_for_status()
        answer = http.get(url + f"gradio_api/call/{name}/{started.json()['event_id']}").text
    kind = next(line[6:].strip() for line in answer.splitlines() if line.startswith("event:"))
    payload = [line[5:].strip() for line in answer.splitlines() if line.startswith("data:")][-1]
    return kind, json.loads(payload)


def error_text(message: dict[str, Any]) -> str | None:
    """The error a queue answer carries (None: it succeeded)."""
    if message.get("success", True) and message.get("msg") != "unexpected_error":
        return None
    output = message.get("output") or {}
    return str(output.get("error") or message.get("message") or output)


def references(path: str) -> dict[str, Any]:
    """Ways a client could name a server file in an event's input, by kind."""
    tagged, bare = {"path": path, "meta": FILE_DATA}, {"path": path}
    return {
        "bare": bare,  # no meta: Gradio itself lets this through to image inputs and handlers
        "tagged": tagged,  # as gradio_client's handle_file payloads look after an upload
        "orig_name": {**tagged, "orig_name": "cat.png", "url": None},
        "editor": {"background": bare, "layers": [bare], "composite": tagged},
        "list": [tagged, bare],
    }


def texts(value: Any) -> Iterable[str]:
    """Every string in a JSON value (keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from texts(item)


def leaks(value: Any, forbidden: Iterable[str]) -> list[str]:
    """The strings of ``value`` that name any of the ``forbidden`` server folders."""
    forbidden = [f for f in forbidden if f]
    return [text for text in texts(value) if any(f in text for f in forbidden)]
