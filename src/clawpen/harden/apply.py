"""Applying and rolling back a harden plan.

:func:`apply` runs the plan's steps in order. Before a step changes anything, its files (and
the account files its commands rewrite) are saved in a :class:`~clawpen.harden.backup.Backup`
and the manifest is on disk. A failed step undoes every step done (its own partial work
included) and raises :class:`HardenFailed` (exit 2). :func:`rollback` removes the users,
tokens and firewall the apply created and restores the files byte for byte (mode and owner
too); a second rollback changes nothing. Both append an audit record.

Commands that must see the root as ``/`` (``visudo -c``, ``sshd -t``, ``sshd -T``) run inside
it with bubblewrap (``chroot`` when bubblewrap is missing); useradd, usermod and userdel take
``--root``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawpen import audit
from clawpen.errors import ClawpenError, HostError
from clawpen.fsutil import write_atomic
from clawpen.harden.backup import Backup, base_dir, latest, load, missing_parents
from clawpen.harden.content import TOKEN_NAME_PREFIX
from clawpen.harden.facts import ids, inside, is_live
from clawpen.harden.plan import FileChange, Plan, Step
from clawpen.tokens import TokenStore

FIREWALL_CONFIRM_WITHIN = 60.0


class HardenFailed(ClawpenError):
    """A step of ``host harden apply`` failed; the steps done were rolled back."""

    exit_code = 2


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise HostError(
            f"host harden {action} needs root", where=f"clawpen host harden {action}", hint="run it with sudo"
        )


ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def bwrap_root_argv(root: Path, argv: list[str]) -> list[str]:
    """``argv`` run by bubblewrap (as root) with ``root`` as its ``/``: its own /proc, /dev, pid,
    network, IPC and UTS namespaces, ended with its parent."""
    return [
        "bwrap", "--bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
        "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
        "--setenv", "PATH", ROOT_PATH, "--", *argv,
    ]  # fmt: skip


def root_argv(root: Path, argv: list[str]) -> list[str]:
    """``argv`` run with ``root`` as its ``/`` (unchanged on the live root)."""
    if is_live(root):
        return argv
    path = ROOT_PATH
    if shutil.which("bwrap"):
        return bwrap_root_argv(root, argv)
    return ["chroot", str(root), "/usr/bin/env", f"PATH={path}", *argv]


def _run(argv: list[str], step: str, *, timeout: float = 120) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HardenFailed(f"{argv[0]} could not run: {err}", where=step) from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise HardenFailed(f"{argv[0]} exited with {done.returncode}: {' | '.join(tail)}", where=step)
    return done.stdout


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """One apply or rollback at a time (an exclusive flock on ``STATE/harden/.lock``)."""
    folder = base_dir(state)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ApplyResult:
    id: str | None
    steps: tuple[str, ...]
    backup: str | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Context:
    root: Path
    state: Path  # clawpen's state: backups, audit log, the firewall's saved table
    token_state: Path  # the root's clawpen state: the operator's API token
    who: str


def _mkdirs(path: Path, backup: Backup, mode: int, owner: tuple[int, int] | None) -> None:
    """Create the missing folders above the file ``path`` (recorded first, for rollback)."""
    for folder in missing_parents(path):
        backup.add("dirs", str(folder))
        folder.mkdir(mode=mode)
        os.chmod(folder, mode)
        if owner is not None:
            os.chown(folder, *owner)


def _owner(root: Path, change: FileChange) -> tuple[int, int]:
    uid, gid = ids(root, change.owner), ids(root, change.group, "group")
    if uid is None or gid is None:
        raise HardenFailed(f"no user {change.owner} or group {change.group} in {root}", where=change.path)
    return uid, gid


def _write(ctx: Context, change: FileChange, backup: Backup, step: str) -> None:
    target = inside(ctx.root, change.path)
    if change.new is None:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        return
    uid, gid = _owner(ctx.root, change)
    private = change.parent_mode == 0o700
    _mkdirs(target, backup, change.parent_mode, (uid, gid) if private else None)
    tmp = target.with_name(f".{target.name}.clawpen-new")
    try:
        write_atomic(tmp, change.new, mode=0o600)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, change.mode)
        if change.validate:
            shown = "/" + str(tmp.relative_to(ctx.root)).lstrip("/") if not is_live(ctx.root) else str(tmp)
            _run(root_argv(ctx.root, [a.replace("{file}", shown) for a in change.validate]), step)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _sshd_effective(ctx: Context, step: Step) -> None:
    out = _run(root_argv(ctx.root, ["sshd", "-T", "-f", "/etc/ssh/sshd_config"]), step.id)
    got: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        got.setdefault(key.lower(), value.strip())
    wrong = [f"{k} is {got.get(k, '(unset)')}, not {v}" for k, v in step.expect if got.get(k) != v]
    if wrong:
        raise HardenFailed(
            "sshd does not use the drop-in's values: " + "; ".join(wrong),
            where=step.id,
            hint="an earlier drop-in or a Match block sets them: look at sshd -T's output",
        )


def _token(ctx: Context, step: Step, backup: Backup) -> None:
    assert step.token_for is not None
    name = step.token_for
    store = TokenStore(ctx.token_state)
    for folder in missing_parents(store.path):
        backup.add("dirs", str(folder))
    backup.save(store.path)
    home_row = [r for r in _passwd(ctx.root) if r[0] == name]
    if not home_row:
        raise HardenFailed(f"no user {name} in {ctx.root} for the token", where=step.id)
    secret_file = inside(ctx.root, f"{home_row[0][5]}/.config/clawpen/token")
    backup.save(secret_file)
    uid, gid = int(home_row[0][2]), int(home_row[0][3])
    _mkdirs(secret_file, backup, 0o700, (uid, gid))
    token, secret = store.create("operator", name=TOKEN_NAME_PREFIX + name)
    backup.add("tokens", token.id)
    write_atomic(secret_file, (secret + "\n").encode(), mode=0o600)
    os.chown(secret_file, uid, gid)


def _passwd(root: Path) -> list[list[str]]:
    from clawpen.harden.facts import table

    return [r for r in table(root, "passwd") if len(r) > 5]


def _step(ctx: Context, step: Step, backup: Backup) -> None:
    for path in (*step.saves, *(f.path for f in step.files)):
        backup.save(inside(ctx.root, path))
    if step.creates_user:
        backup.add("users", step.creates_user)
    for argv in step.commands:
        _run(list(argv), step.id)
    for change in step.files:
        _write(ctx, change, backup, step.id)
    for argv in step.checks:
        _run(root_argv(ctx.root, list(argv)), step.id)
    if step.expect:
        _sshd_effective(ctx, step)
    if step.token_for:
        _token(ctx, step, backup)
    if step.firewall_table:
        from clawpen.net import firewall

        backup.set("firewall", True)
        firewall.apply_table(
            step.firewall_table, ctx.state, confirm_within=FIREWALL_CONFIRM_WITHIN, who=ctx.who
        )


def apply(plan: Plan, ctx: Context) -> ApplyResult:
    """Apply ``plan``'s changes in order, each backed up first; all undone when one fails."""
    require_root("apply")
    if plan.empty:
        return ApplyResult(None, (), None, ("no change: the root already follows [host.harden]",))
    with locked(ctx.state):
        return _apply(plan, ctx)


def _apply(plan: Plan, ctx: Context) -> ApplyResult:
    backup = Backup.create(ctx.state, ctx.root, ctx.who)
    for step in plan.changes:
        try:
            _step(ctx, step, backup)
        except (ClawpenError, OSError) as err:
            what = err.what if isinstance(err, ClawpenError) else str(err)
            try:
                undo(ctx, backup)
            except (ClawpenError, OSError) as undo_err:
                backup.set("state", "undo-failed")
                raise HardenFailed(
                    f"step {step.id} failed: {what}; undoing the steps done failed too: {undo_err}",
                    where=f"host harden apply: {step.id}",
                    hint=f"the backup is {backup.dir}: restore what is left by hand (manifest.json lists it)",
                ) from None
            backup.set("state", "failed")
            audit.append(
                ctx.state,
                ctx.who,
                "host.harden.apply-failed",
                {
                    "id": backup.id,
                    "root": str(ctx.root),
                    "step": step.id,
                    "error": what[-300:],
                    "undone": list(backup.manifest["steps"]),
                },
            )
            done = ", ".join(backup.manifest["steps"]) or "none"
            raise HardenFailed(
                f"step {step.id} failed: {what}; rolled back (steps done before: {done})",
                where=f"host harden apply: {step.id}",
                hint=getattr(err, "hint", None) or "fix the cause, then run `clawpen host harden plan` again",
            ) from None
        backup.add("steps", step.id)
    backup.set("state", "applied")
    audit.append(
        ctx.state,
        ctx.who,
        "host.harden.apply",
        {"id": backup.id, "root": str(ctx.root), "steps": list(backup.manifest["steps"])},
    )
    notes = tuple(n for s in plan.changes for n in s.notes if "systemctl reload" in n or "confirm" in n)
    return ApplyResult(backup.id, tuple(backup.manifest["steps"]), str(backup.dir), notes)


def undo(ctx: Context, backup: Backup) -> dict[str, Any]:
    """Undo what ``backup`` recorded: firewall, tokens, users, then the files byte for byte."""
    out: dict[str, Any] = {"firewall": False, "users": [], "tokens": [], "files": []}
    if backup.manifest.get("firewall"):
        from clawpen.net import firewall

        with contextlib.suppress(ClawpenError):
            firewall.rollback(ctx.state, who=ctx.who)
            out["firewall"] = True
    for name in reversed(backup.manifest["users"]):
        if ids(ctx.root, name) is not None:
            argv = ["userdel", *([] if is_live(ctx.root) else ["--root", str(ctx.root)]), "-r", name]
            done = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
            if ids(ctx.root, name) is not None:
                raise HostError(
                    f"userdel {name} failed: {done.stderr.strip()[-300:]}",
                    where="host harden rollback",
                    hint=f"remove the user by hand: {' '.join(argv)}",
                )
            out["users"].append(name)
    out["files"] = backup.restore_files()  # tokens.json included: the token is gone with it
    out["tokens"] = list(backup.manifest["tokens"])
    return out


def rollback(ctx: Context, backup_id: str | None = None) -> dict[str, Any]:
    """Undo the latest apply to ``ctx.root`` (or ``backup_id``); nothing to do the second time."""
    require_root("rollback")
    with locked(ctx.state):
        return _rollback(ctx, backup_id)


def _rollback(ctx: Context, backup_id: str | None) -> dict[str, Any]:
    backup = load(ctx.state, backup_id) if backup_id else latest(ctx.state, ctx.root)
    if backup is None:
        return {"id": None, "changed": False, "note": f"no harden apply to roll back for {ctx.root}"}
    if backup.manifest.get("state") in ("rolled-back", "failed"):
        return {"id": backup.id, "changed": False, "note": f"{backup.id} is already rolled back"}
    root = Path(backup.manifest["root"])
    ctx = Context(root, ctx.state, ctx.token_state, ctx.who)
    out = undo(ctx, backup)
    backup.set("state", "rolled-back")
    audit.append(
        ctx.state,
        ctx.who,
        "host.harden.rollback",
        {"id": backup.id, "root": str(root), "users": out["users"], "files": len(out["files"])},
    )
    return {"id": backup.id, "changed": True, **out}
