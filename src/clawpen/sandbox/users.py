"""A dedicated, unprivileged host uid/gid for every bot.

Uids come from a reserved range (``CLAWPEN_UID_BASE``, default 1,900,000,000, 65,536 ids)
that steers clear of login users, subordinate id ranges (/etc/subuid) and systemd's dynamic
and container ranges. A bot keeps its uid for as long as the state directory lives, so the
files it leaves in its workspace stay its own. The ids get no /etc/passwd entry on the host:
no password, no shell, no way to log in.

The registry is ``<state>/users.json``, changed under an exclusive lock and written
atomically (write, fsync, rename).
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
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


def identity_for(bot: str, state: Path, base: int | None = None) -> Identity:
    """The bot's identity, allocating a fresh uid the first time a bot name is seen."""
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
    registry = state / "users.json"
    try:
        known = json.loads(registry.read_text())
        if bot in known:
            uid = int(known[bot])
            return Identity(name=bot, uid=uid, gid=uid)
    except (OSError, ValueError):
        pass
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o711)
        with open(state / "users.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                known = json.loads(registry.read_text())
            except FileNotFoundError:
                known = {}
            if bot not in known:
                used = set(known.values())
                subordinate = _subordinate_ranges()
                free = next(
                    (
                        u
                        for u in range(base, base + RANGE)
                        if u not in used and not _taken_on_host(u, subordinate)
                    ),
                    None,
                )
                if free is None:
                    raise SandboxError(
                        f"no free uid left in {base}..{base + RANGE - 1}",
                        where="users",
                        hint="remove bots you no longer use, or set CLAWPEN_UID_BASE to another range",
                    )
                known[bot] = free
                write_atomic(registry, json.dumps(known, indent=1, sort_keys=True).encode())
            uid = int(known[bot])
    except OSError as err:
        raise SandboxError(
            f"cannot allocate a uid for bot {bot!r}: {err}",
            where=f"users: {registry}",
            hint="check that the state directory is writable (set CLAWPEN_HOME to move it)",
        ) from None
    return Identity(name=bot, uid=uid, gid=uid)
