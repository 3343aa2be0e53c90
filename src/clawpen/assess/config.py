"""The configuration group of ``clawpen audit``: what changed, and whether the record of it holds.

* The audit log's hash chain (:func:`clawpen.audit.verify`) and its head against the heads the
  daemon kept in its state database (:func:`clawpen.audit.check_anchors`): a log cut short or
  rewritten from scratch.
* The spec on disk against the newest release (an edit not yet applied), and each bot's code
  folders against what that release ran.
* The configuration changes recorded in the audit log since the newest release.
* Watched files (the spec, clawpen's systemd units, sshd, sudoers, accounts, apt, cron, the
  firewall's file) against their hashes in the previous kept report: a change nobody applied
  through clawpen shows here.
* The permissions of what a bot or another user must never change: the spec and its folder, the
  state folder, the master key, the audit log.
"""

from __future__ import annotations

import calendar
import collections
import hashlib
import os
import stat
import time
from pathlib import Path

from clawpen import audit
from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding, shown_path

CHAIN = CheckInfo(
    "configuration.audit_chain",
    "configuration",
    "the audit log's hash chain is broken",
    "practice 13 (every configuration change audited)",
)
CUT = CheckInfo(
    "configuration.audit_truncated",
    "configuration",
    "the audit log no longer holds a head recorded in the state database",
    "practice 13",
)
UNRELEASED = CheckInfo(
    "configuration.spec_unreleased",
    "configuration",
    "the spec on disk differs from the running release",
    "practice 13; practice 9",
)
CODE = CheckInfo(
    "configuration.code_changed",
    "configuration",
    "a bot's code folder differs from what its release ran",
    "practice 13; practice 9",
)
CHANGES = CheckInfo(
    "configuration.changes",
    "configuration",
    "configuration changes recorded since the newest release",
    "practice 13",
)
FILE = CheckInfo(
    "configuration.file_changed",
    "configuration",
    "a watched system or clawpen file changed since the last audit",
    "practice 13; CIS 6.1 (AIDE)",
)
PERMS = CheckInfo(
    "configuration.permissions",
    "configuration",
    "a file that decides what runs as root is writable by others",
    "CIS 6.1; practice 11",
)
CHECKS = (CHAIN, CUT, UNRELEASED, CODE, CHANGES, FILE, PERMS)

# files whose change matters (globs under the audited root); the spec is added when given
WATCHED = (
    "/etc/systemd/system/clawpen*.service",
    "/etc/systemd/system/clawpen*.timer",
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d/*.conf",
    "/etc/sudoers",
    "/etc/sudoers.d/*",
    "/etc/passwd",
    "/etc/group",
    "/etc/apt/apt.conf.d/*",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d/*",
    "/etc/crontab",
    "/etc/cron.d/*",
    "/etc/nftables.conf",
    "/root/.ssh/authorized_keys",
)
READS = frozenset({"secrets.get", "secrets.ls", "logs", "ps", "status", "events", "export"})


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def fingerprints(ctx: AuditContext) -> dict[str, str]:
    """``{shown path: sha256}`` of every watched file that exists (kept with the report)."""
    out: dict[str, str] = {}
    for pattern in WATCHED:
        for path in sorted(ctx.root.glob(pattern.lstrip("/"))):
            if path.is_file() and not path.is_symlink() and (digest := _sha(path)):
                out[shown_path(ctx, path)] = digest
    if ctx.spec_path is not None and (digest := _sha(ctx.spec_path)):
        out[str(ctx.spec_path)] = digest
    return out


def _audit_log(ctx: AuditContext) -> list[AuditFinding]:
    if ctx.state_dir is None or not (ctx.state_dir / audit.AUDIT_FILE).exists():
        return []
    out = []
    where = str(ctx.state_dir / audit.AUDIT_FILE)
    fix = (
        "find out who changed it (the host's logins), keep this copy for forensics, restore it from a backup"
    )
    problems = audit.verify(ctx.state_dir)
    if problems:
        out.append(
            finding(
                CHAIN,
                Severity.CRITICAL,
                f"the audit log was tampered with: {problems[0]}",
                "a changed record hides who did what; every later record is in doubt",
                fix,
                where=where,
                data={"problems": problems[:20]},
            )
        )
    cut = audit.check_anchors(ctx.state_dir, ctx.anchors)
    if cut:
        out.append(
            finding(
                CUT,
                Severity.CRITICAL,
                f"the audit log was cut or replaced: {cut[0]}",
                "records removed from the end of the log leave a valid chain behind, so only "
                "the heads kept elsewhere show it",
                fix,
                where=where,
                data={"problems": cut[:20]},
            )
        )
    return out


def _release(ctx: AuditContext) -> list[AuditFinding]:
    rel = ctx.release
    if rel is None:
        return []
    out = []
    if ctx.spec_path is not None and Path(rel.spec_path) == ctx.spec_path:
        try:
            text = ctx.spec_path.read_bytes()
        except OSError:
            text = None
        if text is not None and hashlib.sha256(text).hexdigest()[:16] != rel.spec_hash:
            out.append(
                finding(
                    UNRELEASED,
                    Severity.MEDIUM,
                    f"{ctx.spec_path} was edited after release {rel.id} and not applied",
                    "what runs is not what the file says: a review of the file misses the truth",
                    f"review with `clawpen diff -f {ctx.spec_path}`, then `clawpen up` (or undo it)",
                    where=str(ctx.spec_path),
                )
            )
    for bot, changes in sorted(rel.code_changes.items()):
        if changes:
            out.append(
                finding(
                    CODE,
                    Severity.HIGH,
                    f"{bot}: code changed since release {rel.id}: {changes[0]}",
                    "code that changed outside a release runs on the next restart without review "
                    "or a way back",
                    "`clawpen diff` shows it; `clawpen up` releases it, or restore the folder",
                    subject=bot,
                    data={"changes": changes[:20]},
                )
            )
    if ctx.state_dir is not None:
        since: collections.Counter[str] = collections.Counter()
        who: set[str] = set()
        for rec in audit.read(ctx.state_dir):
            at = _ts(str(rec.get("ts", "")))
            action = str(rec.get("action", ""))
            if at is not None and at > rel.created and action not in READS and action != "up":
                since[action] += 1
                who.add(str(rec.get("who", "?")))
        if since:
            listed = ", ".join(f"{a} x{n}" for a, n in since.most_common(8))
            out.append(
                finding(
                    CHANGES,
                    Severity.INFO,
                    f"{sum(since.values())} change(s) since release {rel.id} by {', '.join(sorted(who))}: "
                    f"{listed}",
                    "changes outside releases are easy to forget when something breaks",
                    "`clawpen audit-log` lists them",
                    data=dict(since),
                )
            )
    return out


def _ts(text: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def _files(ctx: AuditContext, now: dict[str, str]) -> list[AuditFinding]:
    if not ctx.previous_files:
        return []
    out = []
    for path in sorted(set(now) | set(ctx.previous_files)):
        before, after = ctx.previous_files.get(path), now.get(path)
        if before == after:
            continue
        what = "created" if before is None else "removed" if after is None else "changed"
        sev = Severity.MEDIUM if ("ssh" in path or "sudoers" in path or "clawpen" in path) else Severity.LOW
        out.append(
            finding(
                FILE,
                sev,
                f"{path} was {what} since the last audit",
                "a change to who may log in, what runs as root or what clawpen runs should be one you made",
                f"check it (`ls -l {path}`; the audit log and the host's logins "
                "say who); the next audit takes it as the new state",
                where=path,
                subject=path,
            )
        )
    return out


def _writable_by_others(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_mode & stat.S_IWOTH:
        return "writable by everyone"
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        return f"writable by group {st.st_gid}"
    if st.st_uid != 0 and os.geteuid() == 0:
        return f"owned by uid {st.st_uid}"
    return None


def _permissions(ctx: AuditContext) -> list[AuditFinding]:
    targets: list[tuple[Path, str]] = []
    if ctx.spec_path is not None:
        targets += [(ctx.spec_path, "the spec"), (ctx.spec_path.parent, "the spec's folder")]
    if ctx.state_dir is not None:
        targets += [(ctx.state_dir, "clawpen's state folder")]
        for name in ("master.key", audit.AUDIT_FILE, "clawpen.db", "secrets.enc"):
            targets.append((ctx.state_dir / name, name))
    out = []
    for path, what in targets:
        problem = _writable_by_others(path)
        readable = (
            path.name == "master.key"
            and path.exists()
            and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH)
        )
        if problem is None and not readable:
            continue
        out.append(
            finding(
                PERMS,
                Severity.CRITICAL,
                f"{what} ({path}) is {problem or 'readable by others'}",
                "whoever can write it decides what clawpen runs as root (or reads every secret)",
                f"chown root:root {path} && chmod go-w{',go-r' if readable else ''} {path}",
                where=str(path),
                subject=str(path),
            )
        )
    return out


def run(ctx: AuditContext) -> list[AuditFinding]:
    return [*_audit_log(ctx), *_release(ctx), *_files(ctx, fingerprints(ctx)), *_permissions(ctx)]
