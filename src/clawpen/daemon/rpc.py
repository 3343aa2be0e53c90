"""The CLI <-> daemon protocol: one JSON object per line over a Unix socket.

Request: ``{"op": "ps", "args": {...}}``. Reply: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"what", "where", "hint", "exit_code"}}``. Streaming operations
(``logs --follow``, ``events --follow``) send ``{"item": ...}`` lines until the client hangs up,
and end with a normal reply when they finish by themselves.
"""

from __future__ import annotations

import json
from typing import Any

from clawpen.errors import ClawpenError

MAX_LINE = 16 << 20


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def ok(result: Any) -> bytes:
    return encode({"ok": True, "result": result})


def item(value: Any) -> bytes:
    return encode({"item": value})


def error(err: ClawpenError) -> bytes:
    return encode(
        {
            "ok": False,
            "error": {"what": err.what, "where": err.where, "hint": err.hint, "exit_code": err.exit_code},
        }
    )


class RemoteError(ClawpenError):
    """An error the daemon reported; carries the daemon's exit code."""

    def __init__(self, what: str, *, where: str | None, hint: str | None, exit_code: int) -> None:
        super().__init__(what, where=where, hint=hint)
        self.exit_code = exit_code


def raise_for(reply: dict[str, Any]) -> Any:
    if reply.get("ok"):
        return reply.get("result")
    err = reply.get("error") or {}
    raise RemoteError(
        str(err.get("what", "the daemon failed")),
        where=err.get("where"),
        hint=err.get("hint"),
        exit_code=int(err.get("exit_code", 1)),
    )
