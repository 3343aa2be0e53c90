"""Reading a root for the harden plan: the files the plan would change, the operator user, the
programs installed, the clawpen command for sudoers, the operator token, the firewall's diff and
the snapshot schedules. Every path is read inside the root; nothing is changed."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from clawpen.errors import HostError
from clawpen.harden.content import (
    AUTO_UPGRADES,
    DEFAULT_CLAWPEN,
    SSHD_DROPIN,
    SSHD_DROPIN_DIR,
    SSHD_MAIN,
    SUDOERS,
    TOKEN_NAME_PREFIX,
    UU_ORIGINS,
)
from clawpen.harden.plan import Facts, FileFact
from clawpen.spec.host import Harden
from clawpen.tokens import TokenStore


def inside(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def is_live(root: Path) -> bool:
    return root.resolve() == Path("/")


def table(root: Path, name: str) -> list[list[str]]:
    """The rows of a colon-separated account file (``/etc/passwd``) in ``root``; [] when absent."""
    try:
        text = inside(root, f"/etc/{name}").read_text(errors="replace")
    except FileNotFoundError:
        return []
    except PermissionError:
        raise HostError(
            f"cannot read /etc/{name} in {root}", where="host harden", hint="run it as root (sudo)"
        ) from None
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def ids(root: Path, name: str, kind: str = "passwd") -> int | None:
    """The uid (``passwd``) or gid (``group``) of ``name`` in ``root``'s account files."""
    for row in table(root, kind):
        if row[0] == name and len(row) > 2 and row[2].isdigit():
            return int(row[2])
    return None


def user_name(root: Path, uid: int) -> str:
    for row in table(root, "passwd"):
        if len(row) > 2 and row[2] == str(uid):
            return row[0]
    return str(uid)


def read_file(root: Path, absolute: str) -> FileFact:
    path = inside(root, absolute)
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise HostError(
                f"{absolute} in {root} is not a regular file",
                where="host harden",
                hint="look at it and move it away; clawpen changes regular files only",
            )
        return FileFact(path.read_bytes(), stat.S_IMODE(st.st_mode), user_name(root, st.st_uid))
    except FileNotFoundError:
        return FileFact(None)
    except PermissionError:
        raise HostError(
            f"cannot read {absolute} in {root}", where="host harden", hint="run it as root"
        ) from None


def unsafe_command(path: Path) -> str | None:
    """Why sudo must not run ``path`` for the operator (it or a folder above it is not root's,
    or is writable by others), or None."""
    if not path.is_file():
        return f"{path} does not exist: install clawpen there, or set [host.harden] clawpen_path"
    for part in [path, *path.parents]:
        st = part.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            return (
                f"{part} is not root's or is writable by others: sudo would run what someone else "
                "can change; install clawpen system-wide (root-owned) or set clawpen_path"
            )
    return None


def clawpen_command(root: Path, cfg: Harden) -> tuple[str, str | None]:
    """The clawpen command the sudoers entry allows, and why it is unsafe (or None)."""
    if cfg.clawpen_path is not None:
        given = cfg.clawpen_path
    elif is_live(root):
        found = shutil.which("clawpen")
        given = os.path.abspath(found) if found else DEFAULT_CLAWPEN
    else:
        given = DEFAULT_CLAWPEN
    target = inside(root, given)
    if not is_live(root) and not target.exists():
        return given, None  # installed into that root later
    return given, unsafe_command(target)


def read_facts(
    root: Path,
    cfg: Harden,
    *,
    token_state: Path,
    firewall: str = "no config",
    firewall_diff: str = "",
    firewall_table: str = "",
    snapshots: tuple[str, ...] | None = None,
) -> Facts:
    """What :func:`clawpen.harden.plan.build_plan` needs, read from ``root``."""
    if not root.is_dir():
        raise HostError(f"{root} is not a folder", where="--root", hint="give the root folder of a system")
    home = None
    for row in table(root, "passwd"):
        if row[0] == cfg.operator and len(row) > 5:
            home = row[5] or f"/home/{cfg.operator}"
    locked = any(
        row[0] == cfg.operator and len(row) > 1 and row[1].startswith("!") for row in table(root, "shadow")
    )
    keys = f"{home or '/home/' + cfg.operator}/.ssh/authorized_keys"
    files = {
        p: read_file(root, p) for p in (SSHD_MAIN, SSHD_DROPIN, SUDOERS, AUTO_UPGRADES, UU_ORIGINS, keys)
    }
    dropins: list[tuple[str, str]] = []
    folder = inside(root, SSHD_DROPIN_DIR)
    if folder.is_dir():
        for entry in sorted(folder.glob("*.conf")):
            if entry.name != SSHD_DROPIN.rsplit("/", 1)[1] and entry.is_file():
                dropins.append((entry.name, entry.read_text(errors="replace")))
    tools = frozenset(
        name
        for name, path in (("sshd", "/usr/sbin/sshd"), ("visudo", "/usr/sbin/visudo"))
        if inside(root, path).is_file()
    )
    command, problem = clawpen_command(root, cfg)
    token = any(t.name == TOKEN_NAME_PREFIX + cfg.operator for t in TokenStore(token_state).list())
    return Facts(
        root=str(root),
        live=is_live(root),
        files=files,
        user_home=home,
        user_locked=locked,
        dropins=tuple(dropins),
        tools=tools,
        clawpen=command,
        clawpen_problem=problem,
        token_exists=token,
        firewall=firewall,
        firewall_diff=firewall_diff,
        firewall_table=firewall_table,
        snapshots=snapshots,
    )
