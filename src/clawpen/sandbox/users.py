"""A dedicated, unprivileged host uid/gid for every bot.

Uids come from a reserved range (``CLAWPEN_UID_BASE``, default 1,900,000,000, 65,536 ids)
that steers clear of login users, subordinate id ranges (/etc/subuid) and systemd's dynamic
and container ranges. A bot keeps its uid for as long as the state directory lives, so the
files it leaves in its workspace stay its own. The ids get no /etc/passwd entry on the host:
no password, no shell, no way to log in.

The registry is ``<state>/users.json``, changed under an exclusive lock and written
atomically (write, fsync, rename); :func:`allocate` gives many new bots their uids in one change
(``clawpen up``), and a bot's uid is read from memory while the file is unchanged. The host's
users are listed once per change, not asked for id by id.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
from collections.abc import Iterable, Iterator
from pathlib import Path

from clawpen.errors import HostError, SandboxError
from clawpen.fsutil import write_atomic
from clawpen.plan.model import Identity

DEFAULT_BASE = 1_900_000_000
RANGE = 65_536
MIN_BASE = 100_000  # above login users and system accounts
MAX_UID = (1 << 31) - 1  # bubblewrap's uid map refuses ids of 2^31 and above


def _subordinate_ranges() -> list[tuple[int, int]]:
    ranges = []
    for name in ("/etc/subuid", "/etc/subgid"):
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                ranges.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    return ranges


def _taken_on_host(uid: int, subordinate: list[tuple[int, int]]) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    return any(lo <= uid < hi for lo, hi in subordinate)


def _check_base(base: int | None) -> int:
    if base is None:
        raw = os.environ.get("CLAWPEN_UID_BASE", str(DEFAULT_BASE))
        base = int(raw) if raw.isdigit() else -1
    if not MIN_BASE <= base <= MAX_UID - RANGE:
        raise HostError(
            f"CLAWPEN_UID_BASE={base} is outside {MIN_BASE}..{MAX_UID - RANGE}",
            where="users",
            hint=f"unset it (default {DEFAULT_BASE}) or pick a base whose {RANGE} ids stay below 2^31 "
            "(user namespaces refuse larger ids)",
        )
    return base


# registry path -> ((st_ino, st_mtime_ns, st_size), its bots): a bot's uid is read from memory
# while users.json is unchanged (every start of every bot asks for it)
_cache: dict[Path, tuple[tuple[int, int, int], dict[str, int]]] = {}


def _known(registry: Path) -> dict[str, int]:
    """The registry's bots and uids (empty when it is missing or unreadable)."""
    try:
        st = registry.stat()
    except OSError:
        return {}
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    hit = _cache.get(registry)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        known = {str(k): int(v) for k, v in json.loads(registry.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
    _cache[registry] = (key, known)
    return known


def _free_uids(base: int, used: set[int]) -> Iterator[int]:
    """The ids of the range not in ``used``, not a host user's (/etc/passwd and NSS) and not in a
    subordinate range, lowest first. The host's users are listed once (``getpwall``); each id
    handed out is also asked for by uid, for NSS sources that do not enumerate."""
    subordinate = _subordinate_ranges()
    try:
        host = {p.pw_uid for p in pwd.getpwall()}
    except OSError:
        host = set()
    for uid in range(base, base + RANGE):
        if uid in used or uid in host or any(lo <= uid < hi for lo, hi in subordinate):
            continue
        if not _taken_on_host(uid, []):
            yield uid


def identity_for(bot: str, state: Path, base: int | None = None) -> Identity:
    """The bot's identity, allocating a fresh uid the first time a bot name is seen."""
    base = _check_base(base)
    uid = _known(state / "users.json").get(bot)
    if uid is None:
        uid = allocate([bot], state, base)[bot]
    return Identity(name=bot, uid=uid, gid=uid)


def allocate(bots: Iterable[str], state: Path, base: int | None = None) -> dict[str, int]:
    """The uid of each of ``bots``, allocating fresh ones for the names not seen before, all in
    one locked change of the registry (one write: ``clawpen up`` of 500 new bots writes once)."""
    base = _check_base(base)
    registry = state / "users.json"
    wanted = list(dict.fromkeys(bots))
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o711)
        with open(state / "users.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                known = {str(k): int(v) for k, v in json.loads(registry.read_text()).items()}
            except FileNotFoundError:
                known = {}
            new = [b for b in wanted if b not in known]
            if new:
                free = _free_uids(base, set(known.values()))
                for bot in new:
                    uid = next(free, None)
                    if uid is None:
                        raise SandboxError(
                            f"no free uid left in {base}..{base + RANGE - 1}",
                            where="users",
                            hint="remove bots you no longer use, or set CLAWPEN_UID_BASE to another range",
                        )
                    known[bot] = uid
                write_atomic(registry, json.dumps(known, indent=1, sort_keys=True).encode())
    except OSError as err:
        raise SandboxError(
            f"cannot allocate a uid for {_names(wanted)}: {err}",
            where=f"users: {registry}",
            hint="check that the state directory is writable (set CLAWPEN_HOME to move it)",
        ) from None
    return {b: known[b] for b in wanted}


def _names(bots: list[str]) -> str:
    if len(bots) == 1:
        return f"bot {bots[0]!r}"
    return f"{len(bots)} bots ({', '.join(bots[:3])}{', ...' if len(bots) > 3 else ''})"
