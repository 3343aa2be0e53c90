"""The CLI <-> daemon protocol: one JSON object per line over a Unix socket.

Request: ``{"op": "ps", "args": {...}}``. Reply: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"what", "where", "hint", "exit_code"}}``. Streaming operations
(``logs --follow``, ``events --follow``) send ``{"item": ...}`` lines until the client hangs up,
and end with a normal reply when they finish by themselves.

Heartbeats: a request may carry ``"heartbeat": S`` (seconds). While its operation runs, the
daemon then writes ``{"heartbeat": true}`` whenever S seconds pass without a reply, so the client
can tell a long operation (a build, a stop with a grace period, a quiet ``events -f``) from a
daemon that does not answer, and keep a time limit between messages rather than on the whole
operation. Clients skip these lines; a request without the key gets none (older clients).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, TypeVar

from clawpen.errors import ClawpenError

if TYPE_CHECKING:  # asyncio only in the daemon: the CLI imports this module too, and asyncio
    # would be its largest import (with ssl, logging, inspect)
    import asyncio
    from collections.abc import Awaitable

MAX_LINE = 16 << 20
HEARTBEAT_KEY = "heartbeat"
MIN_HEARTBEAT = 0.05  # seconds: a client cannot make the daemon write faster than this
MAX_HEARTBEAT = 3600.0
HEARTBEAT = b'{"heartbeat":true}\n'

T = TypeVar("T")


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


def is_heartbeat(message: dict[str, Any]) -> bool:
    return message.get(HEARTBEAT_KEY) is True and len(message) == 1


def heartbeat_interval(request: dict[str, Any]) -> float | None:
    """The heartbeat a request asks for, in seconds (clamped to sane bounds); None for none."""
    value = request.get(HEARTBEAT_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return None if value <= 0 else min(MAX_HEARTBEAT, max(MIN_HEARTBEAT, float(value)))


async def with_heartbeat(work: Awaitable[T], writer: asyncio.StreamWriter, interval: float | None) -> T:
    """Await ``work``, writing :data:`HEARTBEAT` to ``writer`` every ``interval`` seconds until it
    is done (nothing when ``interval`` is None). Lines are written whole, between the
    operation's own writes, so heartbeats never split an item."""
    import asyncio
    import contextlib

    if interval is None:
        return await work
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            if writer.is_closing():
                return await task  # the client left: the operation ends as it would without us
            writer.write(HEARTBEAT)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
