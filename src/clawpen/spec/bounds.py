"""Bounds on the shape of a spec: how many bots, how big an environment or a command line, which
strings are names and paths. Pure checks raising :class:`~clawpen.spec.rules.RuleViolation`
with the fix, shared by the spec models and the ``clawpen run`` flags (no third-party imports).

The limits, and why:

* at most :data:`MAX_BOTS` bots per spec: a typo or a generated file, not a fleet, beyond that;
* an environment variable ``NAME=VALUE`` is at most 128 KiB (the kernel's ``MAX_ARG_STRLEN``:
  a longer one makes ``execve`` fail with E2BIG inside the sandbox) and a bot's environment at
  most 1 MiB, and a command line at most :data:`MAX_ARGS` arguments and 256 KiB: both travel on
  bubblewrap's argv, which the kernel caps at a quarter of the stack limit (2 MiB by default);
* names are matched whole (a trailing newline is not a name);
* a host path is at most ``PATH_MAX`` (4096) bytes without NUL, and never comes from /proc,
  /sys or /dev: those are views of the kernel and of other processes (``/proc/1/root`` is the
  host's root), not folders of files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from clawpen.spec import rules

MAX_BOTS = 1000
MAX_ENV_ENTRY = 128 << 10  # MAX_ARG_STRLEN, counting NAME=VALUE and its NUL
MAX_ENV_TOTAL = 1 << 20
MAX_ARGS = 4096
MAX_ARGV_BYTES = 256 << 10
MAX_PATH = 4096
KERNEL_FOLDERS = ("/proc", "/sys", "/dev")


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_bot_count(count: int) -> None:
    if count > MAX_BOTS:
        raise rules.RuleViolation(
            f"the spec declares {count} bots; at most {MAX_BOTS} are allowed",
            "split the bots over several hosts, or use replicas for identical bots",
        )


def check_env_entry(name: str, value: str) -> None:
    """One variable: a valid name (no ``=``, no NUL), a value without NUL, at most 128 KiB."""
    rules.check_env_name(name)
    if "\0" in value:
        raise rules.RuleViolation(f"environment variable {name} contains a NUL byte", "remove the NUL byte")
    if _size(name) + _size(value) + 2 > MAX_ENV_ENTRY:
        raise rules.RuleViolation(
            f"environment variable {name} is {_size(value)} bytes long; at most "
            f"{MAX_ENV_ENTRY - _size(name) - 2} fit (128 KiB for NAME=VALUE, the kernel's limit)",
            "put large data in a file (the workspace or a read-only mount) and pass its path",
        )


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """Every variable of an ``env`` table, and the whole table at most 1 MiB."""
    total = 0
    for name, value in env.items():
        check_env_entry(name, value)
        total += _size(name) + _size(value) + 2
    if total > MAX_ENV_TOTAL:
        raise rules.RuleViolation(
            f"the environment is {total} bytes; at most {MAX_ENV_TOTAL} (1 MiB) are allowed",
            "put large data in a file (the workspace or a read-only mount) and pass its path",
        )
    return dict(env)


def check_argv(argv: Sequence[str], what: str = "command") -> list[str]:
    """A command line: at least a program name, no NUL, at most 4096 arguments and 256 KiB."""
    hint = f'write {what} = ["python3", "bot.py"]'
    if not argv or not argv[0].strip():
        raise rules.RuleViolation(f"{what} is empty", hint)
    if any("\0" in arg for arg in argv):
        raise rules.RuleViolation(f"{what} holds a NUL byte", "remove the NUL byte")
    if len(argv) > MAX_ARGS:
        raise rules.RuleViolation(
            f"{what} has {len(argv)} arguments; at most {MAX_ARGS} are allowed",
            "pass long lists in a file",
        )
    size = sum(_size(arg) + 1 for arg in argv)
    if size > MAX_ARGV_BYTES or any(_size(arg) >= MAX_ENV_ENTRY for arg in argv):
        raise rules.RuleViolation(
            f"{what} is {size} bytes long; at most {MAX_ARGV_BYTES} (256 KiB), each argument below 128 KiB",
            "pass long data in a file",
        )
    return list(argv)


def check_path_text(raw: str, what: str) -> str:
    """A path as text: not blank, no NUL, at most 4096 bytes."""
    if "\0" in raw or not raw.strip():
        raise rules.RuleViolation(f"{what} {rules.shown(raw)} is not a path", "give a path such as ./data")
    if _size(raw) > MAX_PATH:
        raise rules.RuleViolation(f"{what} is {_size(raw)} bytes long", f"paths are at most {MAX_PATH} bytes")
    return raw


def _kernel_folder(path: str) -> str | None:
    p = PurePosixPath(path)
    for top in KERNEL_FOLDERS:
        if p == PurePosixPath(top) or PurePosixPath(top) in p.parents:
            return top
    return None


def check_source(raw: str, base_dir: str, what: str = "mount source") -> str:
    """A host path a bot would see (a workspace, a mount, a build cache): checked as text, then
    refused when it is or lies under /proc, /sys or /dev -- as written, or once symlinks are
    resolved -- or when it cannot be resolved. Returns the resolved path."""
    check_path_text(raw, what)
    joined = os.path.normpath(os.path.join(base_dir, os.path.expanduser(raw)))
    try:
        real = os.path.realpath(joined)
    except (OSError, ValueError) as err:
        with contextlib.suppress(OSError, ValueError):
            joined = os.path.normpath(os.path.join(os.path.dirname(joined), os.readlink(joined)))
        top = _kernel_folder(joined)
        if top is None:
            reason = getattr(err, "strerror", None) or str(err)
            raise rules.RuleViolation(
                f"{what} {rules.shown(raw)} cannot be resolved: {reason}",
                "give a path that this user can reach, without symlink loops",
            ) from None
        real = joined
    for path in (joined, real):
        top = _kernel_folder(path)
        if top is not None:
            shown = rules.shown(raw) if path == joined else f"{rules.shown(raw)} (= {path})"
            raise rules.RuleViolation(
                f"refusing {what} {shown}: it lies in {top}, the kernel's view of the host and its "
                "processes, not a folder of files",
                "mount a folder of files; a bot gets its own /proc and /dev from clawpen",
            )
    return real


def check_mount_source(raw: str, base_dir: str, what: str = "mount") -> str:
    """:func:`check_source` on the host part of ``HOST[:SANDBOX]``."""
    check_path_text(raw, what)
    return check_source(raw.partition(":")[0], base_dir, what)
