"""Spawn marks: a bubblewrap that no cgroup holds yet, found again after its daemon was killed.

A start runs bubblewrap first and moves the sandbox into the bot's cgroup once bubblewrap has
reported the sandbox's pid: a few milliseconds in which only the starting process knows of it.
bubblewrap waits there on its block fd, which it holds open read-write itself, so a daemon
SIGKILLed in that window leaves a sandbox that never runs the bot (EOF on the block fd would run
it: unsupervised, and outside every cgroup limit). But no cgroup sweep can find it either. So a
daemon's start writes a mark, ``<state>/run/spawning/<cgroup>``, with bubblewrap's pid and start
time, the bot's uid and its own pid and start time, right after the fork, and removes it once the
sandbox is in its cgroup or the start has been torn down. The next daemon's :func:`sweep` kills
the process group of every mark whose writer is dead: bubblewrap leads its own group, and the
held sandbox calls ``setsid`` only once it has been released. The leader may be gone by then
(bubblewrap's monitor dies of SIGPIPE when it writes the rest of its info to a killed
daemon's pipe), so the members are found by group, uid and start time, not through the leader.

Left open: the microseconds between the fork's return and the mark's write. A mark that cannot be
written (a full disk) leaves the start unmarked; it goes on.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from clawpen.procfs import pid_start_time, same_process, stat_fields

MARKS = ("run", "spawning")


def folder(state: Path) -> Path:
    return state.joinpath(*MARKS)


def write(state: Path, cgroup: str, pid: int, uid: int) -> Path | None:
    """Mark the start of bubblewrap ``pid`` (as the bot's ``uid``) for the sandbox of ``cgroup``;
    the mark's path, or None when it could not be written."""
    path = folder(state) / cgroup
    me = os.getpid()
    text = f"{pid} {pid_start_time(pid)} {me} {pid_start_time(me)} {uid}\n".encode()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            continue
        except OSError:
            return None
        try:
            os.write(fd, text)
        except OSError:
            os.close(fd)
            clear(path)
            return None
        os.close(fd)
        return path
    return None


def clear(path: Path | None) -> None:
    """Remove a start's mark (the sandbox is in its cgroup, or gone)."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def sweep(state: Path) -> list[str]:
    """Kill every sandbox a dead process left between its spawn and its cgroup, and remove the
    marks; what was killed, one line each (for the daemon's events)."""
    try:
        marks = sorted(folder(state).iterdir())
    except OSError:
        return []
    killed = []
    for mark in marks:
        try:
            fields = [int(f) for f in mark.read_text().split()]
        except (OSError, ValueError):
            fields = []
        if len(fields) == 5:
            pid, start, writer, writer_start, uid = fields
            if same_process(writer, writer_start):
                continue  # its start is under way (a daemon's, or a foreground run's)
            members = group_members(pid, uid, start)
            for member in members:  # bubblewrap and its held sandbox
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, signal.SIGKILL)
            if members:
                pids = ", ".join(map(str, members))
                killed.append(f"{mark.name}: bubblewrap {pids}, held by a killed daemon before its cgroup")
        clear(mark)
    return killed


def group_members(pgid: int, uid: int, since: int) -> list[int]:
    """The live processes of group ``pgid`` running as ``uid`` that started at ``since`` or later
    (a start's bubblewrap and its sandbox; a group id is not reused while a member lives)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = stat_fields(pid)
        if fields is None or fields[0] in (b"Z", b"X") or int(fields[2]) != pgid or int(fields[19]) < since:
            continue
        if _real_uid(pid) == uid:
            found.append(pid)
    return found


def _real_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
