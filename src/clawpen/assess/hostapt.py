"""The automatic-update policy of ``clawpen audit``'s host group: apt's periodic settings
(/etc/apt/apt.conf.d, /etc/apt/apt.conf: the last value wins), unattended-upgrades in dpkg's
database, a masked apt-daily-upgrade.timer and the apt sources that carry security updates."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from clawpen.assess.hostread import dpkg_installed, read_text
from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding, shown_path

AUTO = CheckInfo(
    "host.updates.unattended",
    "host",
    "automatic updates are on",
    "deployment practice (automatic updates off on a bot host); Lynis PKGS-7420 detects the same "
    "tool (and suggests it on)",
)
NO_SECURITY = CheckInfo(
    "host.updates.no_security_path",
    "host",
    "no way for security updates to reach the host",
    "Lynis PKGS-7392 (Debian security updates)",
)
POLICY = CheckInfo(
    "host.updates.policy",
    "host",
    "the host's update policy",
    "deployment practice (automatic updates off, security updates applied on purpose)",
)
CHECKS = (AUTO, NO_SECURITY, POLICY)
# apt.conf: comments, quoted strings, words and the punctuation { } ;
_APT_TOKEN = re.compile(r'//[^\n]*|#[^\n]*|/\*.*?\*/|"[^"]*"|[{};]|[^\s{};"]+', re.S)


def apt_config(text: str, file: str) -> dict[str, tuple[str, str]]:
    """``key -> (value, "file:line")`` of an apt.conf text (``A::B "v";`` and ``A { B "v"; };``;
    keys lowercase)."""
    out: dict[str, tuple[str, str]] = {}
    scope: list[str] = []
    words: list[tuple[str, int]] = []
    for m in _APT_TOKEN.finditer(text):
        tok = m.group(0)
        if tok.startswith(("//", "#", "/*")):
            continue
        line = text.count("\n", 0, m.start()) + 1
        if tok == "{":
            scope.append(words[0][0] if words else "")
            words = []
        elif tok == "}":
            if scope:
                scope.pop()
            words = []
        elif tok == ";":
            if len(words) >= 2:
                key = "::".join([*scope, words[0][0]]).lower()
                out[key] = (words[1][0].strip('"'), f"{file}:{words[0][1]}")
            words = []
        else:
            words.append((tok, line))
    return out


def _apt_files(ctx: AuditContext) -> list[Path]:
    parts = ctx.path("/etc/apt/apt.conf.d")
    try:
        names = sorted(
            p
            for p in parts.iterdir()
            if re.fullmatch(r"[A-Za-z0-9_.-]+", p.name) and p.suffix in ("", ".conf")
        )
    except OSError:
        names = []
    return [*names, ctx.path("/etc/apt/apt.conf")]


def _security_sources(ctx: AuditContext) -> list[str]:
    """The apt sources of the root that carry security updates (``file:line``)."""
    files = [ctx.path("/etc/apt/sources.list")]
    with contextlib.suppress(OSError):
        files += sorted(
            p for p in ctx.path("/etc/apt/sources.list.d").iterdir() if p.suffix in (".list", ".sources")
        )
    found = []
    for path in files:
        for n, line in enumerate((read_text(path) or "").splitlines(), 1):
            text = line.split("#", 1)[0]
            if "security" in text and (text.strip().startswith("deb") or ":" in text):
                found.append(f"{shown_path(ctx, path)}:{n}")
                break  # one line per file names it
    return found


def updates(ctx: AuditContext) -> list[AuditFinding]:
    """The automatic-update policy: unattended-upgrades on (medium), no security source (low),
    else an INFO finding naming the policy."""
    if not ctx.path("/etc/apt").is_dir():
        return []
    config: dict[str, tuple[str, str]] = {}
    for path in _apt_files(ctx):
        text = read_text(path)
        if text is not None:
            config.update(apt_config(text, shown_path(ctx, path)))
    installed = "unattended-upgrades" in dpkg_installed(ctx)
    enable = config.get("apt::periodic::enable", ("1", ""))
    uu = config.get("apt::periodic::unattended-upgrade", ("0", ""))
    timer = ctx.path("/etc/systemd/system/apt-daily-upgrade.timer")
    masked = timer.is_symlink() and str(timer.readlink()) == "/dev/null"
    security = _security_sources(ctx)
    on = installed and enable[0] != "0" and uu[0] not in ("0", "") and not masked
    policy = {
        "unattended_upgrades_installed": installed,
        "unattended_upgrade": uu[0],
        "periodic_enable": enable[0],
        "timer_masked": masked,
        "security_sources": security,
    }
    if on:
        return [
            finding(
                AUTO,
                Severity.MEDIUM,
                f"automatic updates are ON: unattended-upgrades installs updates by itself (APT::Periodic::"
                f'Unattended-Upgrade "{uu[0]}")',
                "an unattended upgrade can restart the bot's runtime (and the services it needs) while "
                "it works; the practice updates on purpose, in a maintenance window",
                "printf 'APT::Periodic::Unattended-Upgrade \"0\";\\n' "
                "> /etc/apt/apt.conf.d/99clawpen-updates; "
                "then apply security updates on purpose: `apt-get update && apt-get upgrade`, then "
                "`clawpen restart` the bots",
                where=uu[1],
                data=policy,
            )
        ]
    if not security:
        return [
            finding(
                NO_SECURITY,
                Severity.LOW,
                "no security-update path: automatic updates are off and no apt source carries "
                "security updates",
                "known holes in the host's packages stay open with nothing to fix them",
                "add the security suite: `deb http://deb.debian.org/debian-security bookworm-security main` "
                "in /etc/apt/sources.list, then apply updates on purpose "
                "(`apt-get update && apt-get upgrade`)",
                where=shown_path(ctx, ctx.path("/etc/apt/sources.list")),
                data=policy,
            )
        ]
    return [
        finding(
            POLICY,
            Severity.INFO,
            "automatic updates are off; security updates come from " + ", ".join(security[:3]),
            "the practice's policy: apply them on purpose, in a maintenance window",
            "apt-get update && apt-get upgrade, then `clawpen restart` the bots (weekly, say)",
            where=security[0],
            data=policy,
        )
    ]
