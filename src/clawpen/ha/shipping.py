"""An HA bot's ``ha.sync`` as the agent uses it: ship the workspace (primary), restore the last
copy before a takeover (backup). Blocking calls; the agent runs them in its threads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clawpen.errors import HostError
from clawpen.ha.sync import Shipped, ShipRepo
from clawpen.sandbox.users import identity_for
from clawpen.spec.models import Bot

PRUNE_EVERY = 60  # shipments between two prunes (the primary's)
KEEP_LAST = 10


def _row(s: Shipped) -> dict[str, Any]:
    return {"snapshot": s.id, "time": s.time, "host": s.host, "term": s.term, "reason": s.reason,
            "bytes": s.bytes, "added": s.added}  # fmt: skip


class ResticShipper:
    """One bot's shipping through its ``ha.sync`` repository."""

    def __init__(
        self, name: str, host: str, repo: ShipRepo, workspace: Callable[[], Path | None], owner: int | None
    ) -> None:
        self.name, self.host, self.repo = name, host, repo
        self.workspace, self.owner = workspace, owner
        self._since_prune = 0

    def _where(self) -> Path:
        path = self.workspace()
        if path is None:
            raise HostError(f"bot {self.name} has no workspace here", where=f"bots.{self.name}.workspace")
        return path

    def ship(self, *, term: int, reason: str) -> dict[str, Any]:
        self.repo.ensure()
        shipped = self.repo.ship(self._where(), bot=self.name, host=self.host, term=term, reason=reason)
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            self.repo.prune(self.name, keep_last=KEEP_LAST)
        return _row(shipped)

    def restore(self, snapshot: str | None) -> dict[str, Any] | None:
        if snapshot is None:
            if self.repo.is_local and not self.repo.exists():
                return None  # nothing was ever shipped
            latest = self.repo.latest(self.name)
            if latest is None:
                return None
            snapshot = latest.id
        done = self.repo.restore(self.name, snapshot, self._where(), owner_uid=self.owner)
        return _row(done)


def shipper_for(
    name: str, bot: Bot, host: str, services: Any, workspace: Callable[[], Path | None]
) -> ResticShipper:
    """``bot``'s shipper (``services``: the daemon's: vault values, state dir)."""
    sync = bot.ha.sync if bot.ha is not None else None
    assert sync is not None
    state: Path = services.state_dir
    secret = sync.password_secret
    repo = ShipRepo(
        sync.repository,
        cache=state / "ha" / "cache",
        password=lambda: services.secrets([secret])[secret],
        env_secrets=services.secrets(list(sync.env_secrets)) if sync.env_secrets else None,
    )
    return ResticShipper(name, host, repo, workspace, identity_for(name, state).uid)
