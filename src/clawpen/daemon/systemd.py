"""The systemd unit that runs ``clawpen daemon`` (``clawpen daemon install``): render and install.

The unit is hardened as far as the daemon's job allows; ``systemd-analyze security`` rates it 4.1
(4.0 with homes hidden). What it cannot have, and why:

* Root and ``CAP_SETUID``/``CAP_SETGID``/``CAP_CHOWN``/``CAP_DAC_OVERRIDE``/``CAP_KILL``: it starts
  each bot as its own host uid, creates and chowns workspaces (also in users' folders) and
  signals bots. ``CAP_SYS_ADMIN``/``CAP_SYS_PTRACE``/``CAP_SYS_CHROOT``: health checks and ``exec``
  join a bot's namespaces with ``setns(pidfd)``, which checks ptrace access; the mount namespace
  also wants ``CAP_SYS_CHROOT`` (each measured). With ``CAP_SYS_ADMIN`` and the mount calls
  allowed, the file system settings stop mistakes, not a hijacked daemon.
* Seccomp settings are inherited by bubblewrap *and every bot*, over the bot's own filter: seven
  namespace types, the mount calls and ``sethostname`` stay allowed (bubblewrap), so do
  ``AF_INET``/``AF_INET6``/``AF_NETLINK`` (health checks, bots' loopback, bringing up ``lo``) and
  calls that only restrict their caller (``seccomp``, Landlock, ``@pkey``). No
  ``MemoryDenyWriteExecute`` (JITs such as Node's). Refused calls fail with EPERM rather than kill
  the bot; 32-bit binaries cannot run and ``personality`` is locked.
* ``ProtectKernelTunables``, ``ProtectKernelLogs`` and ``ProcSubset=pid`` cover or hide parts of
  /proc, and the kernel then refuses bubblewrap a fresh /proc in a user namespace;
  ``ProtectHostname`` refuses ``sethostname`` even in the bot's UTS namespace;
  ``ProtectControlGroups`` makes /sys/fs/cgroup read-only. ``ProtectProc=invisible`` holds only
  while ``CAP_SYS_PTRACE`` stays, or the daemon would stop seeing its bots in /proc.

Everything is read-only (``ProtectSystem=strict``) but the state folder, /sys/fs/cgroup and the
``writable`` paths: each bot workspace must lie below one of them, and not in /tmp (``PrivateTmp``).
Homes are read-only by default (``protect_home``): the daemon must see workspaces there (bubblewrap
binds them as the bot's uid) and may create them; ``"tmpfs"`` shows only the ``writable`` paths in
them, ``"yes"`` hides them all. The daemon keeps the host's network by default: the egress
gateway connects out for bots and published ports listen on the host (``CAP_NET_ADMIN`` for
the bots' veth links, nftables and tc; ``CAP_NET_BIND_SERVICE`` for the gateway's DNS port and
low published ports).
``host_network=False`` (``clawpen daemon install --no-network``) adds ``PrivateNetwork`` for
hosts whose bots have neither egress nor published ports.
``KillMode=process``: stopping the service stops the daemon, which stops its bots; a crash leaves
them running for the next daemon to adopt, and so are the published-port relays
(:mod:`clawpen.net.portrelay`, processes of their own in the service's cgroup): with
``control-group`` or ``mixed`` a crash-restart of the unit would kill them and published ports
would stop answering until the new daemon starts them again. ``Delegate=yes`` is for bot
cgroups below the daemon's own (today they are in /sys/fs/cgroup/clawpen).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Literal

from clawpen.errors import HostError
from clawpen.fsutil import write_atomic

ProtectHome = Literal["read-only", "tmpfs", "yes", "no"]
UNIT_NAME = "clawpen.service"
UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_STATE = Path("/var/lib/clawpen")
CGROUP_ROOT = "/sys/fs/cgroup"
HOMES = ("/home", "/root", "/run/user")
PRIVATE_TMP = ("/tmp", "/var/tmp")
CAPABILITIES = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_KILL CAP_SETGID CAP_SETUID CAP_SYS_ADMIN CAP_SYS_CHROOT CAP_SYS_PTRACE"
)
NET_CAPABILITIES = "CAP_NET_ADMIN CAP_NET_BIND_SERVICE"
NAMESPACES = "user pid net mnt ipc uts cgroup"
SYSCALLS_ALLOWED = (
    "@system-service @mount @pkey sethostname seccomp landlock_create_ruleset landlock_add_rule "
    "landlock_restrict_self"
)
SYSCALLS_DENIED = "~@clock @cpu-emulation @debug @module @obsolete @raw-io @reboot @swap"
NEXT_STEP = "systemctl enable --now clawpen"


def _quote(value: str) -> str:
    """``value`` as one double-quoted word of a unit file: ``\\`` and ``"`` escaped, ``%`` doubled
    (specifiers). ``$`` stays: only ``Exec*=`` arguments expand it, and the one path we put on
    ``ExecStart=`` is the program, which systemd takes literally."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"control characters cannot go into a systemd unit: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _absolute(path: str | Path, what: str) -> PurePosixPath:
    pure = PurePosixPath(os.path.normpath(path))
    if not pure.is_absolute():
        raise ValueError(f"{what} must be an absolute path, not {str(path)!r}")
    return pure


def _below(path: PurePosixPath, roots: Iterable[str]) -> str | None:
    return next((r for r in roots if path == PurePosixPath(r) or PurePosixPath(r) in path.parents), None)


def _check_visible(path: PurePosixPath, protect_home: str, *, program: bool) -> bool:
    """Raise ValueError if the unit hides ``path``; True if it must be bound in (ProtectHome=tmpfs)."""
    what = "the daemon's program" if program else "the read-write path"
    if tmp := _below(path, PRIVATE_TMP):
        raise ValueError(f"{what} {path} is in {tmp}, which the unit replaces (PrivateTmp=yes)")
    home = _below(path, HOMES)
    if home and (protect_home == "yes" or (protect_home == "tmpfs" and program)):
        raise ValueError(
            f"{what} {path} is in {home}, which ProtectHome={protect_home} hides; "
            'use protect_home="read-only"'
        )
    return bool(home) and protect_home == "tmpfs"


def render_unit(
    exe: str,
    state_dir: Path,
    *,
    python: str | None,
    protect_home: ProtectHome = "read-only",
    writable: Sequence[Path] = (),
    host_network: bool = True,
) -> str:
    """The text of ``clawpen.service``.

    ``ExecStart`` runs ``python -I -m clawpen daemon`` when ``python`` is given, else ``exe daemon``.
    ``writable``: folders (bot workspaces or their parents) the daemon may write to; a missing one
    is skipped at start. Raises ValueError for a relative path, a path the unit would hide (in
    /tmp, or in a home hidden by ``protect_home``) or one that cannot be written into a unit.
    """
    if protect_home not in ("read-only", "tmpfs", "yes", "no"):
        raise ValueError(f"protect_home must be read-only, tmpfs, yes or no, not {protect_home!r}")
    program = _absolute(python or exe, "the python interpreter" if python else "the clawpen executable")
    state = _absolute(state_dir, "the state folder")
    custom_state = state != PurePosixPath(DEFAULT_STATE)
    rw = [("", state)] if custom_state else []  # (prefix, path); "-": skipped when missing
    rw += [("-", _absolute(p, "a writable path")) for p in writable]
    if any(c in str(program) for c in "\"'\\"):
        raise ValueError(f"systemd refuses a program path with quotes or backslashes: {program}")
    _check_visible(program, protect_home, program=True)
    rw_lines = []
    for prefix, path in rw:
        in_home = _check_visible(path, protect_home, program=False)
        if ":" in str(path) and in_home:
            raise ValueError(f"BindPaths= cannot take a path with ':': {path}")
        key = "BindPaths=" if in_home else "ReadWritePaths="
        rw_lines.append(key + _quote(prefix + str(path)))
    argv = [str(program), "-I", "-m", "clawpen", "daemon"] if python else [str(program), "daemon"]
    lines = [
        "# Written by `clawpen daemon install`; run it again rather than editing this file.",
        "[Unit]",
        "Description=clawpen: supervises bots in sandboxes",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_quote(a) for a in argv),
        "Restart=always",
        "RestartSec=1",
        "# Stopping the service stops the daemon, which stops its bots; a crash leaves them running.",
        "KillMode=process",
        "Delegate=yes",
        "# Bots have their own pids limits; the daemon keeps a few descriptors per bot.",
        "TasksMax=infinity",
        "LimitNOFILE=65536:524288",
        "UMask=0077",
    ]
    if custom_state:
        lines.append("Environment=" + _quote(f"CLAWPEN_HOME={state}"))
    else:
        lines += ["StateDirectory=clawpen", "StateDirectoryMode=0700"]
    lines += [
        "ProtectSystem=strict",
        f"ProtectHome={protect_home}",
        f"ReadWritePaths={CGROUP_ROOT}",
        *rw_lines,
    ]
    lines += [
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "PrivateIPC=yes",
        "PrivateMounts=yes",
        *([] if host_network else ["PrivateNetwork=yes", "IPAddressDeny=any", "IPAddressAllow=localhost"]),
        "ProtectProc=invisible",
        "ProtectKernelModules=yes",
        "ProtectClock=yes",
        "NoNewPrivileges=yes",
        f"CapabilityBoundingSet={CAPABILITIES}" + (f" {NET_CAPABILITIES}" if host_network else ""),
        "AmbientCapabilities=",
        "# bubblewrap and the bots inherit everything below.",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        f"RestrictNamespaces={NAMESPACES}",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "SystemCallArchitectures=native",
        f"SystemCallFilter={SYSCALLS_ALLOWED}",
        f"SystemCallFilter={SYSCALLS_DENIED}",
        "SystemCallErrorNumber=EPERM",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def systemd_running() -> bool:
    """Whether systemd is this host's service manager (``sd_booted()``)."""
    return os.path.isdir("/run/systemd/system")


def install_unit(text: str, unit_dir: Path, *, reload: bool) -> Path:
    """Write ``text`` to ``unit_dir/clawpen.service`` (atomically, mode 0644; untouched when it is
    already the same) and, if ``reload`` and systemd is running, ``systemctl daemon-reload``."""
    path = unit_dir / UNIT_NAME
    data = text.encode()
    try:
        unit_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != data:
            write_atomic(path, data, mode=0o644)
        if path.stat().st_mode & 0o7777 != 0o644:
            os.chmod(path, 0o644)  # write_atomic's mode passes through the umask
    except OSError as err:
        raise HostError(
            f"cannot write {path}: {err.strerror or err}",
            where="clawpen daemon install",
            hint="run it as root, or pick another folder with --unit-dir",
        ) from None
    if reload and systemd_running():
        done = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise HostError(
                f"systemctl daemon-reload failed: {done.stderr.strip() or done.returncode}",
                where="clawpen daemon install",
                hint=f"{path} is written; run `systemctl daemon-reload` yourself",
            )
    return path


def next_steps(path: Path, *, reloaded: bool) -> str:
    """What to tell the person after :func:`install_unit` (``reloaded``: it ran daemon-reload)."""
    if reloaded:
        return f"installed {path}; start it now and at every boot with: {NEXT_STEP}"
    if not systemd_running():
        return f"installed {path}; systemd is not running here: once it is, run {NEXT_STEP}"
    return f"installed {path}; run: systemctl daemon-reload && {NEXT_STEP}"
