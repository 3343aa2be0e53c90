"""What a bot of a release ran, beyond its spec section: the content of its code folders and its
build output, recorded per release (``release_bots``) so ``release show``, ``diff`` and
``rollback`` can tell when the same spec ran different code.

A **code folder** is a read-only mount (``filesystem.ro``) whose source lies in the spec's
folder, e.g. the openclaw template's ``./openclaw:/app``; the workspace is data, not code, and is
never hashed. The **content hash** (:func:`tree_hash`) is a sha256 over every entry's relative
path, file type, mode and size, a regular file's content sha256 and a symlink's target, walked in
sorted order without following symlinks: stable across machines and runs. A folder that is
missing or unreadable records that fact (``state``) and never fails an ``up``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
META = ".clawpen-build"  # a build output's metadata file (left out of its content hash)


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _entry(h: Any, rel: str, st: os.stat_result, full: str) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        h.update(f"l\0{rel}\0{os.readlink(full)}\n".encode(errors="surrogateescape"))
    elif stat.S_ISDIR(st.st_mode):
        h.update(f"d\0{rel}\0{mode:o}\n".encode(errors="surrogateescape"))
    elif stat.S_ISREG(st.st_mode):
        sha = _file_sha(full)
        h.update(f"f\0{rel}\0{mode:o}\0{st.st_size}\0{sha}\n".encode(errors="surrogateescape"))
    else:  # fifo, socket, device: type and mode only
        h.update(f"o{stat.S_IFMT(st.st_mode):o}\0{rel}\0{mode:o}\n".encode(errors="surrogateescape"))


def tree_hash(root: str | Path, *, skip: tuple[str, ...] = ()) -> str:
    """The content hash of ``root`` (a folder or a single file); raises OSError when unreadable.
    ``skip``: top-level names left out (a build output's metadata)."""
    h = hashlib.sha256()
    top = os.fspath(root)
    st = os.lstat(top)
    if not stat.S_ISDIR(st.st_mode):
        _entry(h, ".", st, top)
        return h.hexdigest()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(top, rel_dir) if rel_dir else top
        with os.scandir(full_dir) as it:
            names = sorted(e.name for e in it)
        subdirs = []
        for name in names:
            if not rel_dir and name in skip:
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = os.path.join(full_dir, name)
            est = os.lstat(full)
            _entry(h, rel, est, full)
            if stat.S_ISDIR(est.st_mode):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))  # depth first, in sorted order
    return h.hexdigest()


def folder_record(source: str, target: str, path: str) -> dict[str, Any]:
    """One code folder: ``{"source", "target", "hash", "state"}`` (state ``ok``, ``missing``
    or ``unreadable: why``; hash None unless ok)."""
    row: dict[str, Any] = {"source": source, "target": target, "hash": None}
    try:
        row["hash"] = tree_hash(path)
        row["state"] = "ok"
    except FileNotFoundError:
        row["state"] = "missing"
    except OSError as err:
        row["state"] = f"unreadable: {err.strerror or err}"
    return row


def code_folders(bot: Any, base_dir: str) -> list[tuple[str, str, str]]:
    """``(source as written, sandbox target, host path)`` of every read-only mount of ``bot``
    whose source is inside the spec's folder ``base_dir``."""
    base = os.path.realpath(base_dir)
    out: list[tuple[str, str, str]] = []
    for raw in bot.filesystem.ro:
        source, _, target = raw.partition(":")
        host = os.path.normpath(os.path.join(base_dir, os.path.expanduser(source)))
        real = os.path.realpath(host)
        if real == base or real.startswith(base + os.sep):
            out.append((source, target or host, host))
    return out


def read_meta(output: Path) -> dict[str, Any] | None:
    """A build output's ``.clawpen-build`` metadata, or None if absent or unreadable."""
    try:
        data = json.loads((output / META).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def output_hash(output: Path) -> str | None:
    """A build output's content hash from its metadata (computed once, when it was built)."""
    meta = read_meta(output)
    value = None if meta is None else meta.get("output_hash")
    return str(value) if isinstance(value, str) else None


def bot_contents(bot: Any, base_dir: str, build_dir: Path | None, key: str | None) -> dict[str, Any]:
    """What ``bot`` runs: its code folders (hashed now) and its build (``key``: its cache key;
    ``build_dir``: the bot's folder of build outputs, ``<state>-build/<bot>``)."""
    folders = [folder_record(s, t, p) for s, t, p in code_folders(bot, base_dir)]
    build: dict[str, Any] | None = None
    if bot.build is not None and build_dir is not None:
        build = {"key": key, "output_hash": None if key is None else output_hash(build_dir / key)}
    return {"folders": folders, "build": build}


def content_changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """What differs between two recorded contents of one bot ("content of ./openclaw changed",
    "build output changed"); nothing when either is not recorded (a release of an older clawpen)."""
    if not old or not new:
        return []
    out: list[str] = []
    before = {f["source"]: f for f in old.get("folders") or []}
    for f in new.get("folders") or []:
        was = before.get(f["source"])
        if was is not None and (was.get("hash"), was.get("state")) != (f.get("hash"), f.get("state")):
            out.append(f"content of {f['source']} changed")
    a, b = old.get("build") or {}, new.get("build") or {}
    if a and b and (a.get("output_hash"), a.get("key")) != (b.get("output_hash"), b.get("key")):
        out.append("build output changed")
    return out


def rollback_warnings(
    target: int, old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]
) -> list[str]:
    """Per bot, how what a rollback runs now differs from what release ``target`` recorded."""
    out: list[str] = []
    for name in sorted(set(old) & set(new)):
        a, b = old[name], new[name]
        before = {f["source"]: f for f in a.get("folders") or []}
        for f in b.get("folders") or []:
            was = before.get(f["source"])
            if was is not None and (was.get("hash"), was.get("state")) != (f.get("hash"), f.get("state")):
                out.append(
                    f"{name}: the content of {f['source']} differs from release {target}'s "
                    f"(now {f.get('hash') or f.get('state')}); it is your folder, clawpen did not change it"
                )
        ob, nb = a.get("build") or {}, b.get("build") or {}
        if ob.get("output_hash") and ob.get("output_hash") != nb.get("output_hash"):
            out.append(
                f"{name}: its build output was rebuilt and differs from release {target}'s "
                f"(was {ob['output_hash'][:16]}, now {(nb.get('output_hash') or 'unknown')[:16]})"
            )
    return out
