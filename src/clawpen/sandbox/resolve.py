"""Find a plan's command the way the sandbox will see it, from the host, before starting.

bubblewrap reports a missing command as its own exit status 1, indistinguishable from a bot
that exits 1; checking first lets ``clawpen run`` say "command not found" and exit 127.
"""

from __future__ import annotations

import os
import posixpath

from clawpen.plan.model import Plan


def _host_path(plan: Plan, inside: str) -> str | None:
    """The host path behind a sandbox path, or None where the sandbox makes its own (tmpfs)."""
    best: tuple[int, str] | None = None
    for m in plan.mounts:
        covers = inside == m.dest or inside.startswith(m.dest.rstrip("/") + "/")
        longer = best is None or len(m.dest) > best[0]
        if m.kind in ("ro", "rw", "symlink") and m.source is not None and covers and longer:
            best = (len(m.dest), m.dest)
    if best is None:
        return None
    mount = next(m for m in plan.mounts if m.dest == best[1] and m.source is not None)
    rest = inside[len(mount.dest) :]
    if mount.kind == "symlink":
        target = posixpath.normpath(posixpath.join(posixpath.dirname(mount.dest), str(mount.source)))
        return _host_path(plan, target + rest)
    return str(mount.source) + rest


def find_command(plan: Plan) -> str | bool | None:
    """The host path of the command, ``False`` if it surely does not exist in the sandbox,
    ``None`` if it lives somewhere only the sandbox has (e.g. its /tmp)."""
    argv0 = plan.command[0]
    env = dict(plan.env)
    if "/" in argv0:
        inside = posixpath.normpath(posixpath.join(plan.cwd, argv0))
        host = _host_path(plan, inside)
        if host is None:
            return None
        return host if os.path.exists(host) else False
    undecided = False
    for folder in env.get("PATH", "").split(":"):
        if not folder.startswith("/"):
            continue
        host = _host_path(plan, posixpath.join(folder, argv0))
        if host is None:
            undecided = True
        elif os.path.isfile(host) and os.access(host, os.X_OK):
            return host
    return None if undecided else False
