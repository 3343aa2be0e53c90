"""What a notifier is, how a message is delivered (retries with backoff) and how each delivery
is recorded. Notifiers sit behind :class:`Notifier` so the logic is tested with a fake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol


class Message(NamedTuple):
    title: str
    body: str
    severity: str  # info | warning | critical
    kind: str  # firing | repeat | resolved | test
    alert_id: int | None = None


class NotifyFailed(Exception):
    """A notifier could not deliver; the text never holds the URL or a token."""


class Notifier(Protocol):
    @property
    def name(self) -> str:
        """How the notifier is shown (no secrets: the scheme and an index)."""
        ...

    async def send(self, message: Message) -> None:
        """Deliver ``message`` or raise :class:`NotifyFailed`."""
        ...


class Delivery(NamedTuple):
    at: float
    notifier: str
    kind: str
    alert_id: int | None
    ok: bool
    attempts: int
    error: str


class Dispatcher:
    """Sends every message to every notifier, each with ``retries`` more tries after a failure
    (waiting ``backoff``, then twice that, ...); every outcome goes to ``record``."""

    def __init__(
        self,
        notifiers: Sequence[Notifier],
        record: Callable[[Delivery], None],
        *,
        retries: int = 3,
        backoff: float = 2.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.notifiers = list(notifiers)
        self.record = record
        self.retries = retries
        self.backoff = backoff
        self.clock = clock
        self.sleep = sleep
        self._tasks: set[asyncio.Task[list[Delivery]]] = set()

    async def deliver(self, message: Message) -> list[Delivery]:
        """Deliver to every notifier at once; returns (and records) one Delivery each."""
        return list(await asyncio.gather(*(self._one(n, message) for n in self.notifiers)))

    def submit(self, message: Message) -> None:
        """Deliver in the background (the caller does not wait for slow or failing notifiers)."""
        task = asyncio.get_running_loop().create_task(self.deliver(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for background deliveries, e.g. before the daemon stops."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def _one(self, notifier: Notifier, message: Message) -> Delivery:
        error = ""
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts = attempt + 1
            try:
                await notifier.send(message)
            except NotifyFailed as err:
                error = str(err)
            except Exception as err:  # a notifier bug must not stop the others
                error = f"{type(err).__name__}"
            else:
                result = Delivery(
                    self.clock(), notifier.name, message.kind, message.alert_id, True, attempts, ""
                )
                self.record(result)
                return result
            if attempt < self.retries:
                await self.sleep(self.backoff * (2**attempt))
        result = Delivery(self.clock(), notifier.name, message.kind, message.alert_id, False, attempts, error)
        self.record(result)
        return result
