"""The host firewall: ``[host.firewall]`` as one nftables table of clawpen's own.

Only ``table inet clawpen_host`` is ever touched; other tables (Docker's, the distribution's,
an admin's) are never flushed. Every load is one nft transaction that creates the table if
missing, deletes it and recreates it, so it is atomic (all or nothing) and idempotent.

* :func:`render` — pure: the table as nft prints it (so a diff against the live table is exact).
* :func:`plan` — a unified diff between the live table and the wanted one.
* :func:`apply` — checks the script (``nft -c``), saves the live table under the state dir,
  starts a detached revert watcher (:mod:`clawpen.net.firewall_revert`) and loads the script.
  Unless :func:`confirm` runs within the deadline the watcher restores the saved table, so a
  rule that locks the admin out undoes itself.
* :func:`rollback` — restores the saved table. Every step appends an audit record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawpen import audit
from clawpen.errors import HostError, UsageError
from clawpen.fsutil import write_atomic
from clawpen.net.firewall_render import (
    FAMILY,
    QUALIFIED,
    TABLE,
    Diff,
    counters,
    diff,
    load_script,
    normalise,
    render,
    rules,
)
from clawpen.spec.host import Firewall

__all__ = [
    "FAMILY", "QUALIFIED", "TABLE", "ApplyResult", "Diff", "FirewallRefused", "apply", "apply_table",
    "check", "confirm", "counters", "current", "diff", "load_script", "normalise", "plan", "render",
    "revert_if_pending", "rollback", "rules", "status",
]  # fmt: skip

ABSENT = "absent\n"  # saved in place of a table's text when there was no table
STATE_SUBDIR = "firewall"


# ---------------------------------------------------------------------------------------------
# Talking to nft


def require_root() -> None:
    if os.geteuid() != 0:
        raise HostError(
            "the host firewall needs root (CAP_NET_ADMIN) to read and load nftables rules",
            where="clawpen firewall",
            hint="run it as root, e.g. sudo clawpen firewall ...",
        )


def _nft_path() -> str:
    found = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None
    )
    if not found:
        raise HostError("nft is not installed", where="clawpen firewall", hint="apt-get install nftables")
    return found


def _nft(args: list[str], script: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_nft_path(), *args], input=script, capture_output=True, text=True, timeout=60, check=False
    )


def _nft_error(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stderr or proc.stdout).strip() or f"nft exited with {proc.returncode}"


def current() -> str | None:
    """The live ``table inet clawpen_host`` as nft lists it, or None when there is none."""
    proc = _nft(["list", "table", FAMILY, TABLE])
    if proc.returncode == 0:
        return proc.stdout
    if "No such file or directory" in proc.stderr:
        return None
    raise HostError(
        f"cannot list table {QUALIFIED}: {_nft_error(proc)}",
        where="nft list table",
        hint="run as root on a kernel with nftables (modprobe nf_tables)",
    )


class FirewallRefused(HostError):
    """nft refused a script in its check (``nft -c``); nothing was changed."""


def check(script: str) -> None:
    """Let nft (userspace and kernel) check a script without loading it."""
    proc = _nft(["-c", "-f", "-"], script)
    if proc.returncode != 0:
        raise FirewallRefused(
            f"nft refused the firewall script, nothing was changed: {_nft_error(proc)}",
            where="nft -c -f -",
            hint="check the kernel has nf_tables and the inet family (modprobe nf_tables)",
        )


def _load(script: str) -> None:
    proc = _nft(["-f", "-"], script)
    if proc.returncode != 0:
        raise HostError(
            f"nft could not load the firewall script, nothing was changed: {_nft_error(proc)}",
            where="nft -f -",
            hint="the load is one transaction, so the previous table is still in place",
        )


def plan(fw: Firewall) -> Diff:
    """The diff between the live table and the one ``fw`` asks for."""
    return diff(current(), render(fw))


# ---------------------------------------------------------------------------------------------
# State: the saved previous table, the pending confirmation, a lock


@dataclass(frozen=True)
class Store:
    """``<state>/firewall/``: previous.nft, applied.nft, pending.json, lock."""

    state_dir: Path
    dir: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", self.state_dir / STATE_SUBDIR)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save(self, name: str, table: str | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.dir / name, (table or ABSENT).encode(), mode=0o600)

    def saved(self, name: str) -> tuple[bool, str | None]:
        """(exists, table text or None for "absent")."""
        try:
            text = (self.dir / name).read_text()
        except FileNotFoundError:
            return False, None
        return True, None if text == ABSENT else text

    def pending(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / "pending.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def set_pending(self, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.dir / "pending.json", json.dumps(data).encode(), mode=0o600)

    def drop_pending(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "pending.json").unlink()

    def restore_saved(self, name: str, existed: bool, table: str | None) -> None:
        if existed:
            self.save(name, table)
        else:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()

    def clear_pending(self) -> dict[str, Any] | None:
        """Remove the pending confirmation and stop its watcher; returns what was pending."""
        data = self.pending()
        self.drop_pending()
        if data:
            _stop_watcher(data)
        return data


def _stop_watcher(pending: dict[str, Any]) -> None:
    """SIGTERM the watcher of ``pending``, only if that pid still runs that watcher."""
    pid, token = pending.get("pid"), str(pending.get("token", ""))
    if not isinstance(pid, int) or not token:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if token.encode() in cmdline.split(b"\0"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _spawn_watcher(store: Store, after: float, token: str, who: str) -> int:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "clawpen.net.firewall_revert",
            "--after", str(after), "--state", str(store.state_dir), "--token", token, "--who", who,
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )  # fmt: skip
    return proc.pid


# ---------------------------------------------------------------------------------------------
# Operations


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    diff: str
    rules: int
    previous: str  # saved for rollback: "absent" | "table" | "kept" (the saved one stays)
    deadline: float | None  # epoch seconds when the watcher reverts, None when confirmed
    watcher_pid: int | None


def apply(fw: Firewall, state_dir: Path, *, confirm_within: float | None, who: str) -> ApplyResult:
    """Check, save the live table, start the revert watcher (unless ``confirm_within`` is None)
    and load ``fw``'s table in one transaction."""
    return apply_table(render(fw), state_dir, confirm_within=confirm_within, who=who)


def apply_table(table: str, state_dir: Path, *, confirm_within: float | None, who: str) -> ApplyResult:
    """:func:`apply` for an already rendered table text."""
    script = load_script(table)
    store = Store(state_dir)
    try:
        check(script)
    except FirewallRefused as err:
        audit.append(state_dir, who, "firewall.refused", {"table": QUALIFIED, "error": err.what[-300:]})
        raise
    with store.locked():
        live = current()
        change = diff(live, table)
        old = store.pending()
        had_previous, saved_previous = store.saved("previous.nft")
        if old is None and change.changed:
            store.save("previous.nft", live)
            previous = "table" if live else "absent"
        else:  # unchanged, or an unconfirmed apply is pending: keep the last confirmed table
            previous = "kept"
        new: dict[str, Any] | None = None
        if confirm_within is not None and (change.changed or old is not None):
            token = secrets.token_hex(16)
            new = {"token": token, "deadline": time.time() + confirm_within, "who": who}
            try:
                new["pid"] = _spawn_watcher(store, confirm_within, token, who)
            except OSError as err:
                store.restore_saved("previous.nft", had_previous, saved_previous)
                raise HostError(
                    f"cannot start the revert watcher, nothing was changed: {err.strerror}",
                    where="clawpen firewall apply",
                    hint="check the python install; --no-confirm applies without a watcher",
                ) from None
            store.set_pending(new)  # the watcher waits for the lock, so it sees this
        else:
            store.drop_pending()
        try:
            if change.changed:  # an unchanged table is left alone (its counters keep counting)
                _load(script)
        except HostError as err:
            if new is not None:
                _stop_watcher(new)
            if old is not None:
                store.set_pending(old)
            else:
                store.drop_pending()
                store.restore_saved("previous.nft", had_previous, saved_previous)
            audit.append(
                state_dir, who, "firewall.load-failed", {"table": QUALIFIED, "error": err.what[-300:]}
            )
            raise
        if old is not None:
            _stop_watcher(old)
        deadline = None if new is None else float(new["deadline"])
        pid = None if new is None else int(new["pid"])
        store.save("applied.nft", table)
        n_rules = len(normalise(table)) - 5  # table, chain, type line and two closing braces
        audit.append(
            state_dir,
            who,
            "firewall.apply",
            {
                "table": QUALIFIED,
                "changed": change.changed,
                "rules": n_rules,
                "previous": previous,
                "confirm_within": confirm_within if deadline is not None else None,
            },
        )
        return ApplyResult(change.changed, change.text, n_rules, previous, deadline, pid)


def confirm(state_dir: Path, *, who: str) -> dict[str, Any]:
    """Keep the applied table: cancel the pending automatic revert."""
    store = Store(state_dir)
    with store.locked():
        pending = store.clear_pending()
        if pending is None:
            raise UsageError(
                "there is no apply waiting for confirmation",
                where="clawpen firewall confirm",
                hint="it may have been reverted already; see `clawpen firewall status`, `clawpen audit-log`",
            )
        late = time.time() - float(pending.get("deadline", 0))
        audit.append(
            state_dir, who, "firewall.confirm", {"table": QUALIFIED, "applied_by": pending.get("who")}
        )
        return {"confirmed": True, "applied_by": pending.get("who"), "seconds_left": round(-late, 1)}


def _restore(store: Store) -> tuple[str, Diff]:
    exists, previous = store.saved("previous.nft")
    if not exists:
        raise UsageError(
            "there is no saved previous firewall table to restore",
            where=str(store.dir / "previous.nft"),
            hint="`clawpen firewall apply` saves the table it replaces; nothing was applied yet",
        )
    script = load_script(previous)
    check(script)
    change = diff(current(), previous)
    _load(script)
    store.save("applied.nft", previous)
    return ("table" if previous else "absent"), change


def rollback(state_dir: Path, *, who: str) -> dict[str, Any]:
    """Restore the table saved by the last apply (or remove clawpen's table if there was none)."""
    store = Store(state_dir)
    with store.locked():
        restored, change = _restore(store)
        pending = store.clear_pending()
        audit.append(
            state_dir,
            who,
            "firewall.rollback",
            {
                "table": QUALIFIED,
                "restored": restored,
                "changed": change.changed,
                "cancelled_pending": bool(pending),
            },
        )
        return {"restored": restored, "changed": change.changed, "diff": change.text}


def revert_if_pending(state_dir: Path, token: str, *, who: str) -> bool:
    """The watcher's job at its deadline: restore the previous table if the apply that started
    this watcher (``token``) is still unconfirmed. Returns whether it reverted."""
    store = Store(state_dir)
    with store.locked():
        pending = store.pending()
        if pending is None or pending.get("token") != token:
            return False
        try:
            restored, change = _restore(store)
        except Exception as err:  # the watcher has no one to tell but the audit log
            audit.append(
                state_dir, "clawpen-revert", "firewall.auto-revert-failed", {"error": str(err)[-300:]}
            )
            raise
        store.drop_pending()
        audit.append(
            state_dir,
            "clawpen-revert",
            "firewall.auto-revert",
            {"table": QUALIFIED, "restored": restored, "changed": change.changed, "applied_by": who},
        )
        return True


def status(state_dir: Path) -> dict[str, Any]:
    """The live table, whether it matches the last apply, the pending revert and rule counters."""
    store = Store(state_dir)
    live = current()
    has_applied, applied = store.saved("applied.nft")
    has_previous, previous = store.saved("previous.nft")
    pending = store.pending()
    drift = diff(applied, live, ("loaded by clawpen", "live")) if has_applied else None
    return {
        "table": QUALIFIED,
        "present": live is not None,
        "rules": max(len(normalise(live)) - 5, 0) if live else 0,
        "matches_last_load": None if drift is None else not drift.changed,
        "drift": drift.text if drift is not None and drift.changed else "",
        "previous_saved": ("table" if previous else "absent") if has_previous else None,
        "pending": None
        if pending is None
        else {"deadline": pending.get("deadline"), "who": pending.get("who"), "pid": pending.get("pid")},
        "counters": counters(live),
        "last": _last_record(state_dir),
    }


def _last_record(state_dir: Path) -> dict[str, Any] | None:
    """The newest ``firewall.*`` audit record: what clawpen last did to the firewall, and who."""
    for rec in reversed(audit.read(state_dir)):
        if str(rec.get("action", "")).startswith("firewall."):
            return {k: rec.get(k) for k in ("ts", "who", "action", "detail")}
    return None
