"""The accounts of ``clawpen audit``'s host group: /etc/passwd and /etc/shadow of the audited
root (uid 0 besides root, empty passwords, passwords with a login shell)."""

from __future__ import annotations

from clawpen.assess.hostread import read_text, unreadable
from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding

UID0 = CheckInfo("host.users.uid0", "host", "an account other than root has uid 0", "Lynis AUTH-9204")
EMPTY = CheckInfo(
    "host.users.empty_password",
    "host",
    "an account has an empty password",
    "Lynis AUTH-9283; CIS Debian Linux 12 benchmark (shadow password fields are not empty)",
)
PASSWORD_LOGIN = CheckInfo(
    "host.users.password_login",
    "host",
    "an account can log in with a password",
    "deployment practice (a dedicated user with password login disabled); Lynis AUTH-9218",
)
SHADOW = CheckInfo(
    "host.users.unreadable", "host", "the account files could not be read", "clawpen audit (the check itself)"
)
CHECKS = (UID0, EMPTY, PASSWORD_LOGIN, SHADOW)
NOLOGIN = ("nologin", "false", "sync", "shutdown", "halt")


def _is_login_shell(shell: str) -> bool:
    return not shell or shell.rsplit("/", 1)[-1] not in NOLOGIN


def users(ctx: AuditContext) -> list[AuditFinding]:
    """Accounts: uid 0 besides root, empty passwords, passwords with a login shell."""
    passwd_path, shadow_path = ctx.path("/etc/passwd"), ctx.path("/etc/shadow")
    passwd = read_text(passwd_path)
    if passwd is None:
        return []
    out = []
    shadow_text = read_text(shadow_path)
    if shadow_text is None and unreadable(shadow_path):
        out.append(
            finding(
                SHADOW,
                Severity.INFO,
                "could not read /etc/shadow",
                "accounts with empty or set passwords cannot be found without it",
                "run the audit as root",
                where="/etc/shadow",
            )
        )
    hashes: dict[str, tuple[str, int]] = {}
    for n, line in enumerate((shadow_text or "").splitlines(), 1):
        f = line.split(":")
        if len(f) >= 2:
            hashes[f[0]] = (f[1], n)
    for n, line in enumerate(passwd.splitlines(), 1):
        f = line.split(":")
        if len(f) < 7 or not f[0] or f[0].startswith(("+", "-")):
            continue
        name, pw, uid, shell = f[0], f[1], f[2], f[6]
        where = f"/etc/passwd:{n}"
        if uid == "0" and name != "root":
            out.append(
                finding(
                    UID0,
                    Severity.HIGH,
                    f"account {name!r} has uid 0 (it is root under another name)",
                    "a second root account escapes every rule and log line written for root",
                    f"give {name} its own uid (`usermod -u UID {name}`) or remove it (`userdel {name}`)",
                    where=where,
                    subject=name,
                )
            )
        if pw == "x" and name in hashes:
            pw, line_no = hashes[name]
            where = f"/etc/shadow:{line_no}"
        elif pw == "x":
            continue
        login = _is_login_shell(shell)
        if pw == "":
            out.append(
                finding(
                    EMPTY,
                    Severity.CRITICAL if login else Severity.LOW,
                    f"account {name!r} has an empty password" + ("" if login else " (no login shell)"),
                    "anyone can become this account without a password (su, the console, services "
                    "that accept empty passwords)",
                    f"passwd -l {name}",
                    where=where,
                    subject=name,
                )
            )
        elif login and not pw.startswith(("!", "*")):
            out.append(
                finding(
                    PASSWORD_LOGIN,
                    Severity.LOW if name == "root" else Severity.MEDIUM,
                    f"account {name!r} has a password and a login shell ({shell or '/bin/sh'})",
                    "a password can be guessed or reused; the practice's operator logs in with a key and "
                    "has password login disabled",
                    f"passwd -l {name} (SSH keys keep working)",
                    where=where,
                    subject=name,
                )
            )
    return out
