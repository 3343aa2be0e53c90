"""Security rules that a spec must obey, as pure checks with reasons and fixes.

Both the pydantic models (``clawpen.toml``) and the ``clawpen run`` flags call these, so a rule
holds whichever way a bot is declared. A broken rule raises :class:`RuleViolation`, a
``ValueError`` carrying a hint, which the loader turns into a ``PolicyError`` with file:line.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import PurePosixPath

BOT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# A writable mount may not be, or contain, any of these.
_NO_WRITE_OF_OR_ABOVE = (
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/root",
    "/home", "/opt", "/srv", "/var/lib", "/var/log", "/var/run", "/run", "/proc", "/sys", "/dev",
    "/tmp", "/var/tmp", "/var/spool", "/var/mail", "/snap", "/nix",
)  # fmt: skip
# Nothing below these may be mounted writable.
_NO_WRITE_BELOW = (
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/proc",
    "/sys", "/dev", "/run", "/var/run", "/var/lib/docker", "/var/lib/containerd", "/var/lib/clawpen",
    "/var/log", "/var/spool", "/var/mail",
)  # fmt: skip
# Nothing may mount these, or anything above them, even read-only: they hold secrets or
# control sockets.
_SECRETS = (
    "/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers",
    "/etc/sudoers.d", "/etc/ssh", "/etc/ssl/private", "/root", "/proc", "/sys", "/dev", "/run",
    "/var/run", "/var/lib/clawpen", "/var/lib/docker", "/var/lib/containerd", "/boot",
)  # fmt: skip
# Per-user secret folders, refused wherever they are.
_SECRET_DIRNAMES = (".ssh", ".gnupg", ".aws", ".kube", ".docker", ".password-store", ".netrc", ".pki")


class RuleViolation(ValueError):
    """A value that breaks a security or naming rule; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _within(path: PurePosixPath, base: str) -> bool:
    return path == PurePosixPath(base) or PurePosixPath(base) in path.parents


def _above(path: PurePosixPath, target: str) -> bool:
    return path == PurePosixPath(target) or path in PurePosixPath(target).parents


def _homes() -> tuple[str, ...]:
    home = os.environ.get("HOME", "")
    return tuple(h for h in (home, "/root") if h and h != "/")


def check_host_path(raw: str, *, writable: bool, base_dir: str, state_dir: str | None = None) -> str:
    """Resolve ``raw`` (relative to ``base_dir``, symlinks followed) and apply the mount rules.

    Returns the absolute real path. Raises :class:`RuleViolation` for a refused mount.
    """
    if "\0" in raw or not raw.strip():
        raise RuleViolation(f"{raw!r} is not a path", "give a folder path such as ./data")
    real = os.path.realpath(os.path.join(base_dir, os.path.expanduser(raw)))
    path = PurePosixPath(real)
    shown = raw if raw == real else f"{raw} (= {real})"
    if writable:
        for protected in _NO_WRITE_OF_OR_ABOVE:
            if _above(path, protected):
                raise RuleViolation(
                    f"refusing a writable mount of {shown}: it is or contains {protected}",
                    "make the mount read-only, or mount a dedicated folder for the bot's data",
                )
        for protected in _NO_WRITE_BELOW:
            if _within(path, protected):
                raise RuleViolation(
                    f"refusing a writable mount of {shown}: it lies inside {protected}, a system folder",
                    "use a folder of your own, e.g. ./data next to clawpen.toml",
                )
        if path.parent == PurePosixPath("/home"):
            raise RuleViolation(
                f"refusing a writable mount of {shown}: it is a user's home folder",
                "mount a subfolder that holds only the bot's files, e.g. ~/bots/mybot",
            )
    secrets = (*_SECRETS, *(s for s in (state_dir,) if s))
    for secret in secrets:
        if _above(path, secret) or _within(path, secret):
            raise RuleViolation(
                f"refusing to mount {shown}: it is or contains {secret}, which holds host secrets "
                "or control sockets",
                "mount a narrower folder that holds only what the bot needs",
            )
    for part in path.parts:
        if part in _SECRET_DIRNAMES:
            raise RuleViolation(
                f"refusing to mount {shown}: {part} holds credentials",
                "give the bot its keys through `secrets`, not by mounting a credentials folder",
            )
    for home in _homes():
        if _above(path, home):
            raise RuleViolation(
                f"refusing to mount {shown}: it is or contains the home folder {home}",
                "mount a subfolder that holds only the bot's files, e.g. ~/bots/mybot",
            )
    try:
        if stat.S_ISSOCK(os.stat(real).st_mode):
            raise RuleViolation(
                f"refusing to mount {shown}: it is a Unix socket, and a socket lets the bot drive "
                "the service behind it (for docker.sock: root on the host)",
                "remove the mount; clawpen's gateway gives bots network access by policy",
            )
    except OSError:
        pass
    return real


_NO_DEST = (
    "/",
    "/proc",
    "/dev",
    "/sys",
    "/usr",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/tmp",
    "/workspace",
)


def check_mount(raw: str, *, writable: bool, base_dir: str, state_dir: str | None = None) -> tuple[str, str]:
    """``HOST[:SANDBOX]`` -> (real host path, path inside the sandbox; the host path by default)."""
    host, sep, dest = raw.partition(":")
    real = check_host_path(host, writable=writable, base_dir=base_dir, state_dir=state_dir)
    if not sep:
        dest = real
    elif not dest.startswith("/") or ".." in dest.split("/"):
        raise RuleViolation(
            f"sandbox path {dest!r} in {raw!r} is not absolute",
            'write HOST:SANDBOX with an absolute sandbox path, e.g. "./bot:/app"',
        )
    clean = str(PurePosixPath(dest))
    if clean in _NO_DEST or any(_within(PurePosixPath(clean), d) for d in ("/proc", "/dev", "/sys")):
        raise RuleViolation(
            f"cannot mount over {clean} inside the sandbox: clawpen provides it",
            'pick another place, e.g. "/app" or "/data"',
        )
    return real, clean


def check_bot_name(name: str) -> str:
    """Bot names become host user names, hostnames and cgroup names: keep them simple."""
    if not BOT_NAME.match(name):
        raise RuleViolation(
            f"bot name {name!r} is not allowed",
            "use 1-31 characters: lowercase letters, digits and '-', starting with a letter",
        )
    return name


def check_env_name(name: str) -> str:
    if not ENV_NAME.match(name):
        raise RuleViolation(
            f"environment variable name {name!r} is not valid",
            "use letters, digits and '_', not starting with a digit",
        )
    return name


SECRET_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")


def check_secret_name(name: str) -> str:
    if not SECRET_NAME.match(name):
        raise RuleViolation(
            f"secret name {name!r} is not allowed",
            "use upper-case letters, digits and '_', e.g. OPENAI_API_KEY",
        )
    return name


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Every name and value of an ``env`` table (a bot's or a build's)."""
    for name, value in env.items():
        check_env_name(name)
        check_env_value(name, value)
    return env


def check_env_value(name: str, value: str) -> str:
    if "\0" in value:
        raise RuleViolation(f"environment variable {name} contains a NUL byte", "remove the NUL byte")
    return value


def check_cidr(raw: str, *, field: str) -> str:
    """An IPv4 or IPv6 network such as ``203.0.113.7/32`` (a bare address means /32 or /128)."""
    import ipaddress

    try:
        ipaddress.ip_network(raw, strict=True)
    except ValueError as err:
        raise RuleViolation(
            f"{field} entry {raw!r} is not a network: {err}",
            'write an address or a network with its prefix, e.g. "203.0.113.7/32" or "10.0.0.0/8"',
        ) from None
    return raw
