"""What every bot instance needs from the daemon: :class:`Services`, built once in
:mod:`clawpen.daemon.app` (re-exported by :mod:`clawpen.daemon.runtime`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from clawpen.daemon.store import Store
from clawpen.daemon.warm import SparePool
from clawpen.logs.upkeep import Compressor
from clawpen.plan.build import HostFacts
from clawpen.plan.model import SeccompPolicy
from clawpen.sandbox.tier import Tier
from clawpen.supervisor.states import Transition

if TYPE_CHECKING:
    from clawpen.ha.registry import HaRegistry
    from clawpen.net.links import LinkManager
    from clawpen.sandbox.cgroups import CgroupHost


class Services(NamedTuple):
    """What every instance needs from the daemon (built once in :mod:`clawpen.daemon.app`)."""

    tiers: Mapping[str, Tier]  # by the name a bot's `tier` field gives
    cgroups: Callable[[], CgroupHost | None]  # where the bots' cgroups are (the monitor reads them)
    store: Store
    state_dir: Path
    logs_dir: Path
    run_dir: Path
    host: HostFacts
    seccomp: SeccompPolicy
    clock: Callable[[], float]
    record: Callable[[Transition], None]
    bpf: Callable[[], bytes]
    compressor: Compressor
    secrets: Callable[[list[str]], dict[str, bytes]]  # vault values by name
    note: Callable[[str, str, str, int], None]  # kind, reason, bot, replica
    network: LinkManager | None = None  # per-bot namespaces and links (bots with egress)
    ha: HaRegistry | None = None  # the failover agents of HA bots (ha/component.py)
    spares: SparePool | None = None  # builds warm spares (None: every start is cold)
