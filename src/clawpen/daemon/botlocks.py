"""Per-bot lifecycle locks: what a workspace restore holds from its "is the bot stopped?" check
to the swap of the folders, and what ``start`` / ``restart`` take, so a bot is never started on
a half-restored workspace. ``up``, ``down`` and ``rollback`` are kept out by the daemon's
``up_lock``, which a restore holds too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from clawpen.errors import UsageError


class BotLocks:
    """One :class:`asyncio.Lock` per bot name, and why it is held (for a clear refusal)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._why: dict[str, str] = {}

    def busy(self, name: str) -> str | None:
        """Why bot ``name``'s lifecycle is held now (None: it is free)."""
        return self._why.get(name)

    def refuse_if_busy(self, name: str, action: str) -> None:
        """A UsageError (exit 2) when bot ``name`` is held (say, by a restore of its workspace)."""
        why = self._why.get(name)
        if why is not None:
            raise UsageError(
                f"bot {name} cannot {action} now: {why}",
                where=f"clawpen {action} {name}",
                hint=f"wait until it is done, then run `clawpen {action} {name}` again",
            )

    @asynccontextmanager
    async def hold(self, name: str, why: str) -> AsyncIterator[None]:
        """Hold bot ``name``'s lifecycle (waiting for whoever holds it now)."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self._why[name] = why
            try:
                yield
            finally:
                self._why.pop(name, None)
