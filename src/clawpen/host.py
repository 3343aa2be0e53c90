"""What a daemon component may use of the daemon: small protocols, one per need, and the event record.

A component (the gateway, the monitor, the log-space guard) is started with the daemon
(``daemon/server.py`` ``Daemon``), but it types that argument with the protocols here, composed
with a protocol of the few ``services`` fields it reads, declared in its own module. The
``Daemon`` satisfies them structurally, so no component imports the daemon package: the import
layers hold (see docs/architecture.md and the ``[tool.importlinter]`` contract).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    import asyncio

    from clawpen.ops import Operation, Registry
    from clawpen.spec.models import Spec


class Event(NamedTuple):
    """One stored daemon event (a state change, an adoption, a note)."""

    id: int
    at: float
    bot: str | None
    replica: int | None
    kind: str
    from_state: str | None
    to_state: str | None
    reason: str


class Notes(Protocol):
    """Record an event (``kind``, ``reason``, optionally about one bot replica)."""

    def note(self, kind: str, reason: str, bot: str | None = None, replica: int | None = None) -> None: ...


class Operations(Protocol):
    """Register operations (see :mod:`clawpen.ops`) and call the registered ones."""

    @property
    def ops(self) -> Registry: ...

    def add_ops(self, ops: Iterable[Operation[Any]]) -> None: ...


class SpecFeed(Protocol):
    """The spec `up` applied last, and a call with the whole spec after every applied `up`."""

    def current_spec(self) -> Spec | None: ...

    def on_spec(self, listener: Callable[[Spec], None]) -> None: ...


class EventFeed(Protocol):
    """Queues that get every new event (put without waiting; a full queue misses it)."""

    @property
    def subscribers(self) -> set[asyncio.Queue[Event]]: ...
