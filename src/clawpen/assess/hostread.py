"""Reading the audited system for the host checks: files under the audited root, Debian's package
database, sysctl values (the running kernel's when live, else the root's sysctl.d files) and
small commands. Nothing here raises for a missing or unreadable file: the callers decide whether
that means "not installed" or an INFO finding."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

from clawpen.assess.model import AuditContext, shown_path

MAX_FILE = 4 * 1024 * 1024  # larger system files are not what these checks read
SYSCTL_DIRS = (
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
)


def read_text(path: Path) -> str | None:
    """The text of ``path`` (undecodable bytes replaced), or None when it is missing, unreadable,
    not a regular file or larger than :data:`MAX_FILE`."""
    try:
        return _read_regular(path, MAX_FILE, follow=True).decode("utf-8", "replace")
    except ValueError:
        return None


def read_untrusted(path: Path, limit: int) -> bytes:
    """The bytes of a file a bot could have written (its workspace, its build output): opened
    without following a final symlink and without blocking on a FIFO; only a regular file of at
    most ``limit`` bytes is read. ValueError saying why otherwise (never the file's content)."""
    return _read_regular(path, limit, follow=False)


def _read_regular(path: Path, limit: int, *, follow: bool) -> bytes:
    """A regular file's bytes, opened without blocking on a FIFO (a final symlink followed only
    with ``follow``); ValueError saying why not."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow:
            raise ValueError("a symbolic link (not followed)") from None
        raise ValueError(err.strerror or str(err)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # (before fdopen, which refuses a folder)
        os.close(fd)
        raise ValueError("not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as err:
            raise ValueError(err.strerror or str(err)) from None
    if len(data) > limit:
        raise ValueError(f"larger than {limit >> 20} MiB")
    return data


def unreadable(path: Path) -> bool:
    """Whether ``path`` exists but cannot be read (as opposed to missing)."""
    return path.exists() and read_text(path) is None


def dpkg_installed(ctx: AuditContext) -> set[str]:
    """The packages ``dpkg`` lists as installed in the audited root (``Status: install ok
    installed`` in /var/lib/dpkg/status); empty when there is no package database."""
    text = read_text(ctx.path("/var/lib/dpkg/status")) or ""
    out: set[str] = set()
    for stanza in text.split("\n\n"):
        name = status = ""
        for line in stanza.splitlines():
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Status:"):
                status = line.split(":", 1)[1].strip()
        if name and status.split()[-1:] == ["installed"]:
            out.add(name)
    return out


def sysctl_files(ctx: AuditContext) -> list[Path]:
    """The root's sysctl configuration in the order systemd-sysctl applies it: sysctl.d files by
    name (a file in /etc hides one of the same name further down the list), then /etc/sysctl.conf."""
    chosen: dict[str, Path] = {}
    for folder in SYSCTL_DIRS:
        try:
            names = sorted(p for p in ctx.path(folder).iterdir() if p.name.endswith(".conf"))
        except OSError:
            continue
        for p in names:
            chosen.setdefault(p.name, p)
    files = [chosen[name] for name in sorted(chosen)]
    return [*files, ctx.path("/etc/sysctl.conf")]


def configured_sysctls(ctx: AuditContext) -> dict[str, tuple[str, str]]:
    """``key -> (value, "file:line")`` from the root's sysctl files (the last setting wins)."""
    out: dict[str, tuple[str, str]] = {}
    for path in sysctl_files(ctx):
        text = read_text(path)
        if text is None:
            continue
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            key = key.lstrip("-").replace("/", ".")
            out[key] = (value, f"{shown_path(ctx, path)}:{n}")
    return out


def live_sysctl(key: str) -> str | None:
    """The running kernel's value of ``key`` (``kernel.kptr_restrict``), or None when absent."""
    try:
        return Path("/proc/sys", *key.split(".")).read_text().strip()
    except OSError:
        return None


def run_command(argv: list[str], *, timeout: float = 10.0) -> subprocess.CompletedProcess[str] | None:
    """Run ``argv`` (its program looked up on PATH) and return its result; None when the program
    is missing, cannot start or times out."""
    program = shutil.which(argv[0])
    if program is None:
        return None
    try:
        return subprocess.run(
            [program, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def process_names() -> set[str]:
    """The ``comm`` of every process this host runs (live only)."""
    out: set[str] = set()
    try:
        pids = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            out.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return out
