"""The deployment as the report shows it: plain records built from the spec (:func:`from_spec`).

The renderers take these records, never the pydantic models, so every text they print passed
through one place and the unit tests can feed them hostile text the spec's rules would refuse.
Secret values never enter these records: a bot's secrets and its environment are names only.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clawpen.spec.loader import LoadedSpec
    from clawpen.spec.models import Bot


@dataclass(frozen=True)
class BotView:
    name: str
    command: str  # shell-quoted argv, for reading
    tier: str
    image: str = ""
    replicas: int = 1
    user: str = ""  # the bot's host uid when known (the state's users.json), else ""
    restart: str = ""
    schedule: str = ""
    health: str = ""
    timeout: str = ""
    workspace: str = ""
    mounts: tuple[str, ...] = ()
    limits: tuple[tuple[str, str], ...] = ()
    egress: tuple[str, ...] = ()  # the allowlist; empty: no network
    egress_mode: str = "none"  # none | list | open | learn
    publish: tuple[str, ...] = ()
    expose_from: tuple[str, ...] = ()
    bandwidth: str = ""
    secrets: tuple[str, ...] = ()  # names only
    env_names: tuple[str, ...] = ()  # names only: a value may hold a credential
    snapshots: str = ""
    ha_hosts: tuple[str, ...] = ()
    ha_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class FirewallView:
    inbound: str
    rules: tuple[str, ...]  # one line each: "tcp 22 from 203.0.113.7/32 (ssh)"


@dataclass(frozen=True)
class Deployment:
    spec_path: str
    host: str
    bots: tuple[BotView, ...]
    firewall: FirewallView | None = None
    cluster_hosts: tuple[str, ...] = ()
    cluster_secrets: tuple[str, ...] = ()
    gateway_subnet: str = ""
    dns_upstream: tuple[str, ...] = ()
    auto_rollback: bool = False
    before_up_snapshots: bool = False
    state_dir: str = ""

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(sorted({b.tier for b in self.bots}))

    @property
    def has_ha(self) -> bool:
        return any(b.ha_hosts for b in self.bots)


@dataclass(frozen=True)
class Release:
    id: int
    created: float
    who: str
    summary: str
    rollback_of: int | None = None
    changed: tuple[str, ...] = ()  # "added a", "changed b", "removed c" (from the policy hashes)


@dataclass(frozen=True)
class LiveState:
    """The daemon's ``ps``; ``rows`` None when it did not answer (``why`` says so)."""

    rows: tuple[dict[str, object], ...] | None
    why: str = ""


@dataclass(frozen=True)
class AuditSummary:
    started: float
    score: int
    counts: tuple[tuple[str, int], ...]
    worst: tuple[tuple[str, str], ...]  # (severity, title) of the worst findings


@dataclass(frozen=True)
class Facts:
    deployment: Deployment
    live: LiveState
    releases: tuple[Release, ...] = ()
    audit_log: tuple[dict[str, object], ...] = ()
    last_audit: AuditSummary | None = None
    generated: float = 0.0
    notes: tuple[str, ...] = field(default=())  # what could not be read, said in the report


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "unlimited"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value} bytes"


def _restart(bot: Bot) -> str:
    r = bot.restart
    text = f"policy {r.policy}; backoff {r.backoff_initial:g}s to {r.backoff_max:g}s"
    return f"{text}; crashloop after {r.max_restarts} restarts in {r.window:g}s; stop grace {r.stop_grace:g}s"


def _health(bot: Bot) -> str:
    h = bot.health
    if h is None:
        return ""
    what = h.http or h.tcp or shlex.join(h.cmd or [])
    kind = "http" if h.http else "tcp" if h.tcp else "cmd"
    every = f"every {h.interval:g}s (timeout {h.timeout:g}s, {h.retries} tries"
    return f"{kind} {what} {every}; on unhealthy: {h.on_unhealthy})"


def _schedule(bot: Bot) -> str:
    s = bot.schedule
    if s is None:
        return ""
    parts = [f"active {s.active}" if s.active else "", f"restart cron {s.restart}" if s.restart else ""]
    text = "; ".join(p for p in parts if p)
    return f"{text} ({s.timezone})" if s.timezone else text


def bot_view(name: str, bot: Bot, base_dir: Path, uids: dict[str, int]) -> BotView:
    """One bot's record (paths resolved against the spec's folder)."""
    r, n = bot.resources, bot.network
    image = bot.image if isinstance(bot.image, str) else ("built from its context" if bot.image else "")
    mode = n.egress if isinstance(n.egress, str) else ("list" if n.egress else "none")
    limits = [
        ("cpus", f"{r.cpus:g}"),
        ("memory", _bytes(r.memory)),
        ("pids", str(r.pids)),
        ("open files", str(r.nofile)),
        ("disk", _bytes(r.disk)),
        ("/tmp", _bytes(r.tmp)),
    ]
    ha = bot.ha
    ha_secrets: list[str] = []
    if ha is not None and ha.sync is not None:
        ha_secrets = [ha.sync.password_secret, *ha.sync.env_secrets]
    snaps = bot.snapshots
    return BotView(
        name=name,
        command=shlex.join(bot.command),
        tier=bot.tier,
        image=image,
        replicas=bot.replicas,
        user=str(uids[name]) if name in uids else "",
        restart=_restart(bot),
        schedule=_schedule(bot),
        health=_health(bot),
        timeout=_seconds(bot.timeout),
        workspace=str((base_dir / bot.workspace).resolve()) if bot.workspace else "",
        mounts=tuple(
            [f"{m} (read-only)" for m in bot.filesystem.ro] + [f"{m} (read-write)" for m in bot.filesystem.rw]
        ),
        limits=tuple(limits),
        egress=tuple(n.egress) if isinstance(n.egress, list) else (),
        egress_mode=mode,
        publish=tuple(n.publish),
        expose_from=tuple(n.from_),
        bandwidth=f"{n.bandwidth} bit/s" if n.bandwidth else "",
        secrets=tuple(bot.secrets),
        env_names=tuple(sorted(bot.env)),
        snapshots=f"every {snaps.every:g}s" if snaps is not None else "",
        ha_hosts=tuple(ha.hosts) if ha is not None else (),
        ha_secrets=tuple(ha_secrets),
    )


def firewall_view(loaded: LoadedSpec) -> FirewallView | None:
    fw = loaded.spec.host.firewall
    if fw is None:
        return None
    rules: list[str] = []
    if fw.ssh:
        rules.append(f"tcp {fw.ssh_port} from {', '.join(fw.ssh_from) or 'anywhere'} (ssh)")
    rules += [f"tcp {port} from anywhere (allow_tcp)" for port in fw.allow_tcp]
    for rule in fw.allow:
        label = f" ({rule.name})" if rule.name else ""
        rules.append(f"{rule.proto} {rule.port} from {', '.join(rule.from_) or 'anywhere'}{label}")
    if fw.icmp_echo:
        rules.append("icmp echo (ping) from anywhere")
    return FirewallView(inbound=fw.inbound, rules=tuple(rules))


def from_spec(loaded: LoadedSpec, host: str, uids: dict[str, int], state_dir: str) -> Deployment:
    spec = loaded.spec
    cluster = spec.cluster
    hosts = sorted({h for b in spec.bots.values() if b.ha is not None for h in b.ha.hosts})
    return Deployment(
        spec_path=str(loaded.path.resolve()),
        host=(cluster.host if cluster is not None and cluster.host else host),
        bots=tuple(bot_view(n, b, loaded.base_dir, uids) for n, b in sorted(spec.bots.items())),
        firewall=firewall_view(loaded),
        cluster_hosts=tuple(hosts),
        cluster_secrets=(cluster.password_secret,) if cluster is not None and cluster.password_secret else (),
        gateway_subnet=spec.gateway.subnet,
        dns_upstream=tuple(spec.gateway.dns_upstream),
        auto_rollback=spec.deploy.auto_rollback,
        before_up_snapshots=spec.snapshots.before_up,
        state_dir=state_dir,
    )
