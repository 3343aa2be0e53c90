"""What `clawpen up` would change, and why: a pure diff of the bots the daemon has against the
bots a spec wants (:func:`release_plan`). ``up`` applies it; ``up --dry-run`` prints it.

A bot is compared by the hash of its stored policy (its spec section and the spec's folder):

* ``create``    in the spec, not in the daemon;
* ``recreate``  in both, the policy changed (every replica is stopped and started anew);
* ``start``     in both, unchanged, but no replica is supervised (stopped, failed, crashloop);
* ``unchanged`` in both, unchanged, supervised: left alone;
* ``remove``    in the daemon, not in the spec (not for a partial ``up BOT...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

Action = Literal["create", "recreate", "start", "unchanged", "remove"]
ACTIONS: tuple[Action, ...] = ("create", "recreate", "start", "unchanged", "remove")
MAX_FIELDS = 6  # changed fields named in a `why`


class Current(NamedTuple):
    """A bot the daemon has now."""

    spec_hash: str  # of its stored policy (daemon/store.py policy_hash)
    policy: Mapping[str, Any]  # {"spec": {...}, "base_dir": "..."}
    states: tuple[str, ...] = ()  # each replica's state ("running", "crashloop"...)
    supervised: tuple[bool, ...] = ()  # each replica: whether a supervising task is alive


class Wanted(NamedTuple):
    """A bot the spec wants."""

    spec_hash: str
    policy: Mapping[str, Any]
    replicas: int = 1


class Change(NamedTuple):
    """What happens to one bot, to which replicas, and why."""

    bot: str
    action: Action
    replicas: tuple[int, ...]
    why: str


class ReleasePlan(NamedTuple):
    """Every bot's :class:`Change`, sorted by bot name."""

    changes: tuple[Change, ...]

    def names(self, action: Action) -> list[str]:
        return [c.bot for c in self.changes if c.action == action]

    @property
    def empty(self) -> bool:
        """Nothing would be started, stopped or restarted."""
        return all(c.action == "unchanged" for c in self.changes)

    def as_dict(self) -> dict[str, Any]:
        """``{action: [bot...]}`` for every action, and ``changes`` with each one's replicas and why."""
        out: dict[str, Any] = {a: self.names(a) for a in ACTIONS}
        out["changes"] = [c._asdict() | {"replicas": list(c.replicas)} for c in self.changes]
        return out


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of what differs between two policies (nested tables one level at a time)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                found += changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [prefix.rstrip(".")] if old != new else []


def _fields_why(current: Current, wanted: Wanted) -> str:
    old, new = current.policy, wanted.policy
    fields = changed_fields(old.get("spec"), new.get("spec"))
    if old.get("base_dir") != new.get("base_dir"):
        fields.append("the spec's folder")
    if not fields:  # same content, other hash: stored by an older clawpen with other defaults
        return "changed (stored by another version of clawpen)"
    more = f" and {len(fields) - MAX_FIELDS} more" if len(fields) > MAX_FIELDS else ""
    return f"changed: {', '.join(fields[:MAX_FIELDS])}{more}"


def release_plan(current: Mapping[str, Current], wanted: Mapping[str, Wanted]) -> ReleasePlan:
    """Which bots (and replicas) to create, recreate, start, leave and remove, and why.

    Pure: ``current`` is what the daemon has, ``wanted`` what the spec asks for. Every bot in
    ``current`` but not in ``wanted`` is removed; a partial ``up`` passes only the bots it names
    in both."""
    changes: list[Change] = []
    for name in sorted(set(current) | set(wanted)):
        cur, want = current.get(name), wanted.get(name)
        if want is None:
            assert cur is not None
            replicas = tuple(range(len(cur.states)))
            changes.append(Change(name, "remove", replicas, "not in the spec any more"))
            continue
        all_replicas = tuple(range(want.replicas))
        if cur is None:
            changes.append(Change(name, "create", all_replicas, "new in the spec"))
        elif cur.spec_hash != want.spec_hash:
            changes.append(Change(name, "recreate", all_replicas, _fields_why(cur, want)))
        elif not any(cur.supervised):
            states = sorted(set(cur.states)) or ["stopped"]
            changes.append(Change(name, "start", all_replicas, f"not running ({', '.join(states)})"))
        else:
            alive = sum(cur.supervised)
            why = "running, unchanged"
            if alive < len(cur.supervised):
                why += f" ({alive} of {len(cur.supervised)} replicas supervised)"
            changes.append(Change(name, "unchanged", (), why))
    return ReleasePlan(tuple(changes))
