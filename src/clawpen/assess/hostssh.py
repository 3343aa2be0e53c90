"""The SSH server checks of ``clawpen audit``: sshd's effective global settings, read from its
files the way sshd reads them.

``/etc/ssh/sshd_config`` and the files its ``Include`` lines name (a relative pattern is below
/etc/ssh; the matches in name order) are read in order; for a keyword the FIRST value wins
(``ListenAddress`` collects every value). Lines inside ``Match`` blocks apply to some
connections only and are ignored for the global value (a block ends at the next ``Match all``
or at the end of the file holding it). A keyword no file sets has sshd's built-in default
(``PasswordAuthentication yes``, ``PermitRootLogin prohibit-password``, ``MaxAuthTries 6``).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from clawpen.assess.hostread import dpkg_installed, read_text
from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding, shown_path

MAIN = "/etc/ssh/sshd_config"
MAX_INCLUDE_DEPTH = 16
DEFAULTS = {
    "passwordauthentication": "yes",
    "kbdinteractiveauthentication": "yes",
    "permitrootlogin": "prohibit-password",
    "permitemptypasswords": "no",
    "x11forwarding": "no",
    "maxauthtries": "6",
    "usepam": "no",
}
# older name of KbdInteractiveAuthentication, still accepted by sshd
ALIASES = {"challengeresponseauthentication": "kbdinteractiveauthentication"}
RELOAD = "then check with `sshd -t` and reload: `systemctl reload ssh`"
DROPIN = "/etc/ssh/sshd_config.d/10-clawpen-harden.conf"  # the file `clawpen host harden` writes
ANY_ADDRESS = ("0.0.0.0", "::", "*")  # noqa: S104 (compared, never bound)

_SRC = "CIS Debian Linux 12 benchmark, SSH server ({}); Lynis SSH-7408"
PASSWORD = CheckInfo(
    "host.ssh.password_login", "host", "SSH allows password logins", _SRC.format("PasswordAuthentication")
)
KBD = CheckInfo(
    "host.ssh.kbd_interactive",
    "host",
    "SSH allows keyboard-interactive (PAM password) logins",
    _SRC.format("KbdInteractiveAuthentication"),
)
ROOT = CheckInfo("host.ssh.root_login", "host", "SSH allows root logins", _SRC.format("PermitRootLogin"))
EMPTY = CheckInfo(
    "host.ssh.empty_passwords",
    "host",
    "SSH accepts empty passwords",
    _SRC.format("PermitEmptyPasswords"),
)
LISTEN = CheckInfo(
    "host.ssh.listen_all",
    "host",
    "SSH listens on every address",
    "deployment practice (SSH only from the admin's network); Lynis SSH-7408 (ListenAddress)",
)
X11 = CheckInfo("host.ssh.x11_forwarding", "host", "SSH forwards X11", _SRC.format("X11Forwarding"))
TRIES = CheckInfo(
    "host.ssh.max_auth_tries", "host", "SSH allows many tries per connection", _SRC.format("MaxAuthTries")
)
UNREADABLE = CheckInfo(
    "host.ssh.unreadable",
    "host",
    "sshd's configuration could not be read",
    "clawpen audit (the check itself)",
)
CHECKS = (PASSWORD, KBD, ROOT, EMPTY, LISTEN, X11, TRIES, UNREADABLE)


@dataclass
class SshdConfig:
    """sshd's global settings: ``values[keyword] = (value, "file:line")`` (lowercase keywords),
    every ``ListenAddress`` and the files that could not be read."""

    values: dict[str, tuple[str, str]] = field(default_factory=dict)
    listen: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    main: str = MAIN

    def get(self, key: str) -> tuple[str, str]:
        """The value of ``key`` and where it was decided (the main file and "default" for a default)."""
        if key in self.values:
            return self.values[key]
        return DEFAULTS[key], f"{self.main} (sshd's default)"


def _split(line: str) -> tuple[str, str] | None:
    """``Keyword value`` or ``Keyword=value`` -> (lowercase keyword, value without quotes)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    head, sep, rest = line.replace("\t", " ").partition(" ")
    if "=" in head:
        head, _, after = head.partition("=")
        rest = after + sep + rest
    rest = rest.strip().lstrip("=").strip()
    if len(rest) >= 2 and rest[0] == rest[-1] == '"':
        rest = rest[1:-1]
    key = head.strip().lower()
    return (ALIASES.get(key, key), rest) if key else None


def _include_targets(ctx: AuditContext, pattern: str) -> list[Path]:
    """The files an ``Include`` pattern names, in name order, inside the audited root."""
    pure = PurePosixPath(pattern)
    if not pure.is_absolute():
        pure = PurePosixPath("/etc/ssh") / pure
    found = sorted(glob.glob(glob.escape(str(ctx.root).rstrip("/")) + str(pure)))
    return [Path(p) for p in found]


def parse(ctx: AuditContext) -> SshdConfig | None:
    """sshd's global settings from the audited root, or None when there is no sshd_config."""
    main = ctx.path(MAIN)
    if not main.exists():
        return None
    config = SshdConfig(main=MAIN)
    _read(ctx, main, config, 0)
    return config


def _read(ctx: AuditContext, path: Path, config: SshdConfig, depth: int) -> None:
    text = read_text(path)
    name = shown_path(ctx, path)
    if text is None:
        config.unreadable.append(name)
        return
    in_match = False
    for n, raw in enumerate(text.splitlines(), 1):
        pair = _split(raw)
        if pair is None:
            continue
        key, value = pair
        if key == "match":
            in_match = value.strip().lower() != "all"
            continue
        if in_match:
            continue
        if key == "include":
            if depth >= MAX_INCLUDE_DEPTH:
                config.unreadable.append(f"{name}:{n} (Include nested too deep)")
                continue
            for pattern in value.split():
                for target in _include_targets(ctx, pattern):
                    _read(ctx, target, config, depth + 1)
            continue
        if key == "listenaddress":
            config.listen.append((value, f"{name}:{n}"))
        elif key not in config.values:
            config.values[key] = (value, f"{name}:{n}")


def installed(ctx: AuditContext) -> bool:
    """Whether an SSH server is installed in the audited root."""
    return "openssh-server" in dpkg_installed(ctx) or ctx.path("/usr/sbin/sshd").exists()


def _on(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "on")


def _listen_host(value: str) -> str:
    """The address of a ListenAddress value (``[::]:22``, ``0.0.0.0:2222``, ``host rdomain x``)."""
    addr = value.split(maxsplit=1)[0] if value.split() else ""
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    if addr.count(":") == 1:
        return addr.split(":", 1)[0]
    return addr


def _set(key: str, value: str) -> str:
    return (
        f'`clawpen host harden apply` ([host.harden]) does it; by hand, put "{key} {value}" in {DROPIN} '
        f"(drop-ins are read first: the first value wins), {RELOAD}"
    )


def run(ctx: AuditContext) -> list[AuditFinding]:
    """The SSH findings of the audited root (none when no SSH server is installed)."""
    if not installed(ctx):
        return []
    config = parse(ctx)
    if config is None:
        return []
    out: list[AuditFinding] = []
    for name in config.unreadable:
        out.append(
            finding(
                UNREADABLE,
                Severity.INFO,
                f"could not read {name}",
                "settings in an unreadable file are not judged, so the SSH findings may be incomplete",
                "run the audit as root",
                where=name,
                subject=name,
            )
        )
    password, where = config.get("passwordauthentication")
    if _on(password):
        out.append(
            finding(
                PASSWORD,
                Severity.HIGH,
                f"SSH accepts passwords (PasswordAuthentication {password})",
                "a password can be guessed from the network; keys cannot",
                _set("PasswordAuthentication", "no"),
                where=where,
                data={"value": password},
            )
        )
    kbd, where = config.get("kbdinteractiveauthentication")
    pam, _ = config.get("usepam")
    if _on(kbd) and _on(pam):
        out.append(
            finding(
                KBD,
                Severity.MEDIUM,
                f"SSH accepts keyboard-interactive logins through PAM (KbdInteractiveAuthentication {kbd})",
                "with UsePAM yes this asks for the account's password even when PasswordAuthentication is no",
                _set("KbdInteractiveAuthentication", "no"),
                where=where,
                data={"value": kbd},
            )
        )
    root, where = config.get("permitrootlogin")
    root_l = root.strip().lower()
    if root_l not in ("no", "forced-commands-only"):
        high = root_l == "yes"
        out.append(
            finding(
                ROOT,
                Severity.HIGH if high else Severity.LOW,
                f"SSH lets root log in (PermitRootLogin {root})",
                "root logs in with every right and no trace of who it was; the practice logs in as a "
                "dedicated user"
                + ("" if high else " (root needs a key here, but a stolen key is the whole host)"),
                _set("PermitRootLogin", "no"),
                where=where,
                data={"value": root},
            )
        )
    empty, where = config.get("permitemptypasswords")
    if _on(empty):
        out.append(
            finding(
                EMPTY,
                Severity.CRITICAL,
                "SSH lets accounts with an empty password log in (PermitEmptyPasswords yes)",
                "anyone who knows an account name without a password logs in",
                _set("PermitEmptyPasswords", "no"),
                where=where,
            )
        )
    everywhere = [w for v, w in config.listen if _listen_host(v) in ANY_ADDRESS]
    if not config.listen or everywhere:
        out.append(
            finding(
                LISTEN,
                Severity.LOW,
                "SSH listens on every address of the host",
                "every network the host is on can reach sshd; only a firewall rule then keeps SSH to "
                "the admin's addresses",
                f'put "ListenAddress ADDRESS" (the admin network\'s address) in {DROPIN}, {RELOAD}; '
                "or allow SSH only from the admin's addresses in [host.firewall] ssh_from",
                where=everywhere[0] if everywhere else f"{config.main} (no ListenAddress: all)",
                data={"listen": [v for v, _ in config.listen]},
            )
        )
    x11, where = config.get("x11forwarding")
    if _on(x11):
        out.append(
            finding(
                X11,
                Severity.LOW,
                "SSH forwards X11 (X11Forwarding yes)",
                "a forwarded X display lets the server side read the client's keystrokes and screen",
                _set("X11Forwarding", "no"),
                where=where,
            )
        )
    tries, where = config.get("maxauthtries")
    if not tries.isdigit() or int(tries) > 4:
        out.append(
            finding(
                TRIES,
                Severity.LOW,
                f"SSH allows {tries} authentication tries per connection (MaxAuthTries {tries})",
                "more tries per connection make guessing cheaper and hide it in fewer log lines",
                _set("MaxAuthTries", "4"),
                where=where,
                data={"value": tries},
            )
        )
    return out
