"""Snapshot ageing through the storage tiers (``[storage]``, :mod:`clawpen.spec.storage`).

:func:`plan_ageing` is pure: given each tier's snapshots, the time and the settings, it says what
to copy and what to forget. A snapshot older than ``hot.age`` is copied from hot to warm and, once
warm holds it (a snapshot whose restic ``original`` is its id), forgotten in hot; older than
``warm.age`` it goes from warm to cold the same way, or is forgotten when there is no cold tier.
Without a warm tier nothing moves; cold keeps everything, or per series (a bot, clawpen's state)
what ``cold.keep`` says (:func:`trim_cold`; not part of a dry run: restic decides it).

:func:`run_ageing` applies the plan until nothing is left to do (a copy, then a fresh listing,
then the forgets it allows), so a run interrupted after a copy is finished by the next one and a
snapshot is never forgotten before the next tier lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from clawpen.snapshots.tierrepo import TierRepo, TierSnapshot
from clawpen.spec.snapshots import KeepCounts
from clawpen.spec.storage import StorageSettings

TIERS = ("hot", "warm", "cold")


class Action(NamedTuple):
    """``copy`` snapshot ``id`` of tier ``source`` to ``target``, or ``forget`` it in ``source``."""

    kind: str  # "copy" | "forget"
    source: str
    target: str | None
    id: str
    key: str
    age_s: float


def plan_ageing(
    listing: Mapping[str, Sequence[TierSnapshot]], now: float, storage: StorageSettings
) -> list[Action]:
    """What ageing does now; ``listing``: each tier's snapshots (a tier without one is empty)."""
    if storage.warm is None:
        return []
    actions: list[Action] = []
    keys = {tier: {s.key for s in listing.get(tier, ())} for tier in TIERS}
    steps = [("hot", "warm", storage.hot.age), ("warm", "cold" if storage.cold else None, storage.warm_age)]
    for source, target, age in steps:
        for snap in listing.get(source, ()):
            old = now - snap.time
            if old <= age:
                continue
            if target is None:
                actions.append(Action("forget", source, None, snap.id, snap.key, old))
            elif snap.key in keys[target] or (target == "warm" and snap.key in keys["cold"]):
                actions.append(Action("forget", source, target, snap.id, snap.key, old))
            else:
                actions.append(Action("copy", source, target, snap.id, snap.key, old))
    return actions


class AgeingReport(NamedTuple):
    copied: list[Action]
    forgotten: list[Action]
    created: list[str]  # tiers initialised now


def run_ageing(
    repos: Mapping[str, TierRepo],
    storage: StorageSettings,
    now: float,
    *,
    dry_run: bool = False,
    max_rounds: int = 4,
) -> AgeingReport:
    """Apply :func:`plan_ageing` to the repositories (``repos``: hot, and warm/cold when set)."""
    copied: list[Action] = []
    forgotten: list[Action] = []
    created: list[str] = []
    for _ in range(max_rounds):
        listing = {name: repo.snapshots() for name, repo in repos.items()}
        actions = plan_ageing(listing, now, storage)
        if dry_run:
            return AgeingReport(
                [a for a in actions if a.kind == "copy"], [a for a in actions if a.kind == "forget"], []
            )
        if not actions:
            break
        copies = [a for a in actions if a.kind == "copy"]
        for (source, target), ids in _grouped(copies).items():
            assert target is not None
            if repos[target].ensure_from(repos[source]):
                created.append(target)
            repos[target].copy_from(repos[source], ids)
        copied += copies
        # forgets only for what the listing showed in the next tier (or with no next tier)
        for (source, _target), ids in _grouped([a for a in actions if a.kind == "forget"]).items():
            repos[source].forget(ids)
        forgotten += [a for a in actions if a.kind == "forget"]
        if not copies:
            break
    cold = repos.get("cold")
    if cold is not None and storage.cold is not None and storage.cold.keep is not None:
        forgotten += trim_cold(cold, storage.cold.keep, now)
    return AgeingReport(copied, forgotten, created)


def trim_cold(cold: TierRepo, keep: KeepCounts, now: float) -> list[Action]:
    """``[storage] cold.keep``: each series in cold (a bot's snapshots, clawpen's state) keeps
    what ``keep`` says; the rest is forgotten and pruned."""
    listing = cold.snapshots()
    series = sorted({t for s in listing for t in s.tags if t.startswith("bot:") or t == "state"})
    by_id = {s.id: s for s in listing}
    gone: list[Action] = []
    for tag in series:
        for sid in cold.forget_keep(tag, keep):
            snap = by_id.get(sid)
            age = now - snap.time if snap is not None else 0.0
            gone.append(Action("forget", "cold", None, sid, snap.key if snap else sid, age))
    return gone


def _grouped(actions: Sequence[Action]) -> dict[tuple[str, str | None], list[str]]:
    out: dict[tuple[str, str | None], list[str]] = {}
    for a in actions:
        out.setdefault((a.source, a.target), []).append(a.id)
    return out


def tier_repos(
    state_dir: Path,
    storage: StorageSettings,
    *,
    password: Callable[[], bytes],
    secret: Callable[[str], bytes],
    restic: str = "restic",
    argv_seen: list[list[str]] | None = None,
) -> dict[str, TierRepo]:
    """The tiers' repositories: hot is ``<state>/snapshots/repo``; warm and cold as configured."""
    cache = state_dir / "snapshots" / "cache"
    repos = {
        "hot": TierRepo(
            "hot", str(state_dir / "snapshots" / "repo"), cache=cache, password=password,
            restic=restic, argv_seen=argv_seen,
        )
    }  # fmt: skip
    for name, tier in (("warm", storage.warm), ("cold", storage.cold)):
        if tier is not None:
            env = {n: secret(n) for n in tier.env_secrets}
            repos[name] = TierRepo(
                name, tier.repository, cache=cache, password=password, env_secrets=env,
                restic=restic, argv_seen=argv_seen,
            )  # fmt: skip
    return repos
