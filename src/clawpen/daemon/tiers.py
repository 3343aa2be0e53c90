"""The daemon's tiers by name: which one runs a bot, and its sandboxes saved by an earlier daemon.

The tiers are built once, in :mod:`clawpen.daemon.app`, and reach everything else as
``Services.tiers`` (:class:`clawpen.sandbox.tier.Tier`); nothing here knows which tier it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from clawpen.daemon.store import Instance as InstanceRow
from clawpen.daemon.warm import SLOT_SUFFIX, paths, remove_stale
from clawpen.errors import ClawpenError, HostError
from clawpen.sandbox.tier import RunningSandbox, SandboxRecord, Tier

if TYPE_CHECKING:
    from clawpen.sandbox.cgroups import CgroupHost

DEFAULT = "sandbox"


def tier_for(tiers: Mapping[str, Tier], name: str, bot: str) -> Tier:
    """The daemon's tier called ``name`` (a bot's ``tier`` field); HostError if it has none."""
    try:
        return tiers[name]
    except KeyError:
        raise HostError(
            f"tier {name!r} is not available in this daemon",
            where=f"bots.{bot}.tier",
            hint=f"tiers here: {', '.join(sorted(tiers)) or 'none'}",
        ) from None


def adopt_row(tiers: Mapping[str, Tier], tier: str, row: InstanceRow, status: Path) -> RunningSandbox | None:
    """The running sandbox a saved instance row names, if it still runs and its tier is here."""
    if row.pid is None or tier not in tiers:
        return None
    record = SandboxRecord(row.pid, row.sandbox_pid, row.pid_start, row.cgroup)
    return tiers[tier].adopt(record, status=status, started_at=row.started_at or 0.0)


def stored_tier(policy: dict[str, object]) -> str:
    """The tier a stored policy names (read raw: the policy may be one this clawpen refuses)."""
    spec = policy.get("spec")
    tier = spec.get("tier") if isinstance(spec, dict) else None
    return tier if isinstance(tier, str) else DEFAULT


def stop_stored(
    tiers: Mapping[str, Tier], run_dir: Path, tier: str, row: InstanceRow, cgroups: CgroupHost | None = None
) -> None:
    """Kill the sandbox of a saved row that still runs and release it (a refused stored bot, a
    validate copy left behind), and the warm spare its daemon left beside it."""
    with contextlib.suppress(ClawpenError, OSError):
        slot = 1 if (row.cgroup or "").endswith(SLOT_SUFFIX[1]) else 0
        sandbox = adopt_row(tiers, tier, row, paths(run_dir, row.bot, row.replica, slot)["status"])
        if sandbox is not None:
            sandbox.kill()
            sandbox.teardown()
    remove_stale(cgroups, row.cgroup)
