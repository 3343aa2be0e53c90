"""Security rules that a spec must obey, as pure checks with reasons and fixes.

Both the pydantic models (``clawpen.toml``) and the ``clawpen run`` flags call these, so a rule
holds whichever way a bot is declared. A broken rule raises :class:`RuleViolation`, a
``ValueError`` carrying a hint, which the loader turns into a ``PolicyError`` with file:line.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

from clawpen.errors import PolicyError

BOT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}\Z")  # \Z: "bot\n" is no name
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")

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
# Never a workspace or a mount themselves, read-only or not: the root, the top-level folders and
# the shared folders below /usr and /var (every parent of one is listed too, so a path that
# contains one is itself one). Any top-level /lib* counts as well.
SYSTEM_FOLDERS = frozenset(
    (
        "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
        "/lost+found", "/media", "/mnt", "/nix", "/opt", "/proc", "/root", "/run", "/sbin", "/snap",
        "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib32",
        "/usr/lib64", "/usr/libexec", "/usr/local", "/usr/local/bin", "/usr/local/lib",
        "/usr/local/sbin", "/usr/local/share", "/usr/sbin", "/usr/share", "/usr/src", "/var",
        "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/lock", "/var/log", "/var/mail",
        "/var/opt", "/var/run", "/var/spool", "/var/tmp", "/var/www",
    )
)  # fmt: skip
# Of those, the ones a read-only mount may still show: public code and data, the same for every
# user, that the sandbox's /usr holds anyway.
_READ_ONLY_OK = frozenset(
    f for f in SYSTEM_FOLDERS if f.startswith("/usr/") and f not in ("/usr/local", "/usr/src")
)


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


def is_system_folder(path: str) -> bool:
    """``/``, a top-level folder such as /etc or /lib64, or a shared one such as /var/www."""
    p = PurePosixPath(path)
    return str(p) in SYSTEM_FOLDERS or (len(p.parts) == 2 and p.parts[1].startswith("lib"))


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def check_location(
    real: str, *, shown: str, what: str, writable: bool, state_dir: str | None, spec_dir: str | None
) -> None:
    """The location rules for one resolved path (``real``: absolute, symlinks and ``..`` resolved).

    * never ``/`` or a system folder (:data:`SYSTEM_FOLDERS`; read-only, a public one below /usr
      such as /usr/share may be shown);
    * never the state folder ``state_dir`` (resolved here), a folder inside it or one that
      contains it: it holds the vault's key, the database and the control socket;
    * never a folder that contains the spec file's folder ``spec_dir`` (resolved here), nor, for
      a writable path, that folder itself: the bot could rewrite its own spec.

    Raises :class:`RuleViolation` naming ``what`` (e.g. ``workspace``)."""
    path = PurePosixPath(real)
    if is_system_folder(real) and (writable or real not in _READ_ONLY_OK):
        raise RuleViolation(
            f"refusing {what} {shown}: it is {'the root folder' if real == '/' else 'a system folder'}",
            "give the bot a folder of its own, e.g. ./data next to clawpen.toml (created for it if missing)",
        )
    if state_dir:
        state = _real(state_dir)
        if _above(path, state) or _within(path, state):
            where = "is" if str(path) == state else ("contains" if _above(path, state) else "lies inside")
            raise RuleViolation(
                f"refusing {what} {shown}: it {where} clawpen's state folder {state}, which holds the "
                "vault's key, the database and the control socket",
                f"use a folder outside {state}, e.g. ./data next to clawpen.toml",
            )
    if spec_dir:
        spec = _real(spec_dir)
        if path in PurePosixPath(spec).parents or (writable and str(path) == spec):
            where = "is" if str(path) == spec else "contains"
            raise RuleViolation(
                f"refusing {what} {shown}: it {where} the folder of the spec file ({spec}), so the "
                "bot could change its own spec",
                "use a subfolder of its own, e.g. ./data next to clawpen.toml",
            )


def check_workspace_location(path: str, *, state_dir: Path, spec_file: Path | None, what: str) -> None:
    """Refuse a workspace (or writable mount) at ``path`` that is ``/``, a system folder, clawpen's
    state folder or near it (inside, containing), or the spec file's folder or one above it.

    ``path`` is resolved first (``~``, ``..``, symlinks; relative to the spec file's folder, else
    the current folder). ``what`` names the field or flag in the error (``bots.x.workspace``,
    ``--workspace``). Raises :class:`~clawpen.errors.PolicyError`."""
    if "\0" in path or not path.strip():
        raise PolicyError(f"{path!r} is not a path", where=what, hint="give a folder path such as ./data")
    spec_dir = os.path.dirname(_real(spec_file)) if spec_file is not None else None
    real = os.path.realpath(os.path.join(spec_dir or os.getcwd(), os.path.expanduser(path)))
    shown = path if path == real else f"{path} (= {real})"
    try:
        check_location(
            real,
            shown=shown,
            what="the workspace" if what.endswith("workspace") else what,
            writable=True,
            state_dir=str(state_dir),
            spec_dir=spec_dir,
        )
    except RuleViolation as err:
        raise PolicyError(str(err), where=what, hint=err.hint) from None


def check_host_path(
    raw: str,
    *,
    writable: bool,
    base_dir: str,
    state_dir: str | None = None,
    base_is_spec: bool = True,
) -> str:
    """Resolve ``raw`` (relative to ``base_dir``, symlinks followed) and apply the mount rules.

    ``state_dir``: clawpen's state folder (default: this process's, :func:`clawpen.paths.state_dir`).
    ``base_is_spec``: ``base_dir`` is the spec file's folder (not so for ``clawpen run`` flags,
    which resolve against the current folder), so neither it nor a folder above it may be mounted
    (see :func:`check_location`). Returns the absolute real path. Raises :class:`RuleViolation`
    for a refused mount.
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
    if state_dir is None:
        from clawpen.paths import state_dir as default_state_dir

        state_dir = str(default_state_dir())
    check_location(
        real,
        shown=shown,
        what="a writable mount of" if writable else "to mount",
        writable=writable,
        state_dir=state_dir,
        spec_dir=base_dir if base_is_spec else None,
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


def check_mount(
    raw: str, *, writable: bool, base_dir: str, state_dir: str | None = None, base_is_spec: bool = True
) -> tuple[str, str]:
    """``HOST[:SANDBOX]`` -> (real host path, path inside the sandbox; the host path by default)."""
    host, sep, dest = raw.partition(":")
    real = check_host_path(
        host, writable=writable, base_dir=base_dir, state_dir=state_dir, base_is_spec=base_is_spec
    )
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


def shown(text: str) -> str:
    """``text`` quoted for a message, cut to 40 characters (a name may be anything a spec says)."""
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def check_bot_name(name: str) -> str:
    """Bot names become host user names, hostnames and cgroup names: keep them simple."""
    if not BOT_NAME.match(name):
        raise RuleViolation(
            f"bot name {shown(name)} is not allowed",
            "use 1-31 characters: lowercase letters, digits and '-', starting with a letter",
        )
    return name


def check_env_name(name: str) -> str:
    if not ENV_NAME.match(name):
        raise RuleViolation(
            f"environment variable name {shown(name)} is not valid",
            "use letters, digits and '_', not starting with a digit (no '=', spaces or NUL)",
        )
    return name


SECRET_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}\Z")


def check_secret_name(name: str) -> str:
    if not SECRET_NAME.match(name):
        raise RuleViolation(
            f"secret name {shown(name)} is not allowed",
            "use upper-case letters, digits and '_', e.g. OPENAI_API_KEY",
        )
    if name.startswith("CLAWPEN_"):  # clawpen.vault.store.RESERVED_PREFIX
        raise RuleViolation(
            f"secret {name} is clawpen's own (names starting with CLAWPEN_ are), not a bot's",
            "give the bot a secret of its own, e.g. OPENAI_API_KEY",
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
