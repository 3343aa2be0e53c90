"""Server-sent events: the daemon's events as they are recorded, a bot's log lines as they are
written. Each stream sends a comment line every ``KEEPALIVE`` seconds while idle, which is also
how a closed connection is noticed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from clawpen.api.auth import HttpError
from clawpen.daemon.server import Daemon
from clawpen.daemon.store import Event
from clawpen.errors import HostError
from clawpen.logs.query import LogRecord, follow

KEEPALIVE = 10.0
MAX_LOG_STREAMS = 32  # each follows its files in a thread of its own
_QUEUE = 10_000


def sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def events(daemon: Daemon, bot: str | None, limit: int) -> AsyncIterator[bytes]:
    """The last ``limit`` events, then each new one (of ``bot`` only, when given)."""
    queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=_QUEUE)
    daemon.subscribers.add(queue)  # before reading the past: nothing falls in between
    try:
        last = 0
        for past in daemon.store.events(bot=bot, limit=limit):
            last = past.id
            yield sse("event", past._asdict())
        yield b": live\n\n"
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if event.id > last and (bot is None or event.bot == bot):
                yield sse("event", event._asdict())
    finally:
        daemon.subscribers.discard(queue)


class LogFollowers:
    """The threads following logs, so that a flood of streams cannot start a thread each.

    Only a stream that started holds a slot (its thread, until it ends): a response the client
    left before it began costs nothing."""

    def __init__(self) -> None:
        self.threads: set[threading.Thread] = set()

    @property
    def active(self) -> int:
        self.threads = {t for t in self.threads if t.is_alive()}
        return len(self.threads)

    def reserve(self) -> None:
        if self.active >= MAX_LOG_STREAMS:
            raise HttpError(
                429,
                HostError(
                    f"too many live log streams ({MAX_LOG_STREAMS})",
                    where="api",
                    hint="close other dashboard tabs or `logs/stream` clients",
                ),
            )


def _record(rec: LogRecord) -> dict[str, Any]:
    return {"ts": rec.ts, "stream": rec.stream, "text": rec.text}


async def logs(
    logs_dir: Path, bot: str, grep: str | None, tail: int, followers: LogFollowers
) -> AsyncIterator[bytes]:
    """The last ``tail`` records, then each new one; :func:`clawpen.logs.query.follow` runs in a
    thread of its own (woken by inotify, and every 0.2 s to see whether the client left) and
    hands records to the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[LogRecord | None] = asyncio.Queue()
    stop = threading.Event()
    dropped = 0

    def push(rec: LogRecord | None) -> None:
        nonlocal dropped
        if rec is not None and queue.qsize() >= _QUEUE:
            dropped += 1
            return
        queue.put_nowait(rec)

    def run() -> None:
        try:
            for rec in follow(logs_dir, bot, grep=grep, tail=tail, stop=stop.is_set, poll_interval=0.2):
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(push, rec)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(push, None)

    thread = threading.Thread(target=run, name=f"api-logs-{bot}", daemon=True)
    followers.threads.add(thread)
    thread.start()
    try:
        yield b": live\n\n"
        while True:
            try:
                rec = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if rec is None:
                return
            if dropped:
                yield sse("dropped", {"lines": dropped})
                dropped = 0
            yield sse("log", _record(rec))
    finally:
        stop.set()
