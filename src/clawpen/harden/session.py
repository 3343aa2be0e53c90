"""What ``clawpen host harden`` works from: the spec's ``[host.harden]`` (the practice's defaults
when the spec has none), the facts of the root, the firewall's diff (live root only) and the
snapshot schedules, made into a plan and the context to apply it in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clawpen.harden.apply import Context
from clawpen.harden.facts import inside, is_live, read_facts
from clawpen.harden.plan import Plan, build_plan
from clawpen.spec.host import Harden
from clawpen.spec.models import Spec


@dataclass(frozen=True)
class Session:
    cfg: Harden
    plan: Plan
    ctx: Context
    defaults: bool  # the spec had no [host.harden]


def _every(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def snapshot_schedules(spec: Spec) -> tuple[str, ...]:
    """The spec's snapshot schedules, one line each (empty: none)."""
    out = []
    if spec.snapshots.state_every is not None:
        out.append(f"[snapshots] clawpen's state every {_every(spec.snapshots.state_every)}")
    for name, bot in sorted(spec.bots.items()):
        if bot.snapshots is not None:
            out.append(f"bot {name}: its workspace every {_every(bot.snapshots.every)}")
    return tuple(out)


def token_state(root: Path, state: Path) -> Path:
    """Where the root's clawpen keeps its tokens: this clawpen's state on the live root, the
    default state folder inside another root."""
    return state if is_live(root) else inside(root, "/var/lib/clawpen")


def prepare(root: Path, spec: Spec, state: Path, who: str) -> Session:
    """The plan for ``root`` from ``spec`` (reads, never changes)."""
    cfg = spec.host.harden or Harden()
    firewall, diff_text, table = "no config", "", ""
    if cfg.firewall and not is_live(root):
        firewall = "another root"
    elif cfg.firewall and spec.host.firewall is not None:
        from clawpen.net import firewall as fw

        fw.require_root()
        table = fw.render(spec.host.firewall)
        change = fw.diff(fw.current(), table)
        firewall, diff_text = ("changed" if change.changed else "unchanged"), change.text
    facts = read_facts(
        root,
        cfg,
        token_state=token_state(root, state),
        firewall=firewall,
        firewall_diff=diff_text,
        firewall_table=table,
        snapshots=snapshot_schedules(spec) if cfg.snapshots else None,
    )
    ctx = Context(root, state, token_state(root, state), who)
    return Session(cfg, build_plan(cfg, facts), ctx, spec.host.harden is None)
