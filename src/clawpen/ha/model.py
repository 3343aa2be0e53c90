"""What the failover's parts share: a host's cluster (etcd, the fence, its threads), a bot's
``ha`` as the agent reads it, the shipping protocol, the roles."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from clawpen.ha.etcd import Etcd, EtcdUnavailable
from clawpen.ha.fenceclient import FenceClient

T = TypeVar("T")
MARGIN_MIN = 0.5  # seconds the fence's deadline keeps before etcd's expiry, at least


class Role(StrEnum):
    STANDBY = "standby"
    PRIMARY = "primary"


@dataclass(frozen=True)
class HaPolicy:
    """What the agent needs of a bot's ``ha`` table (durations in seconds)."""

    bot: str
    hosts: tuple[str, ...]
    check_url: str | None = None
    check_interval: float = 30.0
    check_timeout: float = 5.0
    check_failures: int = 3
    sync_interval: float | None = None


class Shipper(Protocol):
    """The bot's workspace shipping (``ha.sync``), blocking calls run in a thread."""

    def ship(self, *, term: int, reason: str) -> dict[str, Any]: ...
    def restore(self, snapshot: str | None) -> dict[str, Any] | None: ...


@dataclass
class Cluster:
    """What every agent of this daemon shares."""

    etcd: Etcd
    fence: FenceClient
    host: str
    prefix: str
    ttl: int
    poll: float
    executor: Executor
    note: Callable[[str, str, str | None], None]  # kind, reason, bot
    addresses: dict[str, str] = field(default_factory=dict)  # host name -> its registered address

    def key(self, bot: str, leaf: str) -> str:
        return f"{self.prefix}/bots/{bot}/{leaf}"

    async def run(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """``fn`` (a blocking etcd or restic call) in the cluster's threads, within ``timeout``."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.executor, fn), timeout or self.ttl)
        except TimeoutError:
            raise EtcdUnavailable(
                f"no answer within {timeout or self.ttl:g}s", where=", ".join(self.etcd.config.endpoints)
            ) from None

    @property
    def margin(self) -> float:
        return max(MARGIN_MIN, self.ttl * 0.1)
