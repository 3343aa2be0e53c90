"""The dependency checks of ``clawpen audit``: known vulnerabilities (OSV) and outdated packages.

``run(ctx)`` does both; the daemon's schedules call :func:`run_vulnerable` (``[audit]
vulnerabilities``, monthly) and :func:`run_outdated` (``[audit] dependencies``, weekly) apart.
Vulnerability data comes from OSV's API when ``ctx.online`` (falling back to ``ctx.osv``, an
offline export, when the API does not answer), else from ``ctx.osv``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

from clawpen.assess import deps, osv, outdated, versions
from clawpen.assess.model import AuditContext, AuditFinding, CheckInfo, Severity, finding

G = "dependencies"
_SCAN = "deployment practice 13 (vulnerability scan monthly)"
_UPDATES = "deployment practice 13 (dependency updates weekly)"
VULNERABLE = CheckInfo(
    "dependencies.vulnerable", G, "a package with a known vulnerability", f"OSV database (osv.dev); {_SCAN}"
)
OUTDATED = CheckInfo(
    "dependencies.outdated",
    G,
    "a newer version of a package is available",
    f"{_UPDATES}; Lynis PKGS-7392; CIS Debian Linux 12 benchmark (updates and patches installed)",
)
NO_DATA = CheckInfo("dependencies.no_data", G, "no vulnerability data to check the packages against", _SCAN)
UNREADABLE = CheckInfo("dependencies.unreadable", G, "a lockfile or package list could not be read", _SCAN)
NOT_CHECKED = CheckInfo("dependencies.not_checked", G, "newer versions were not looked up", _UPDATES)
CHECKS = (VULNERABLE, OUTDATED, NO_DATA, UNREADABLE, NOT_CHECKED)


def run(ctx: AuditContext) -> list[AuditFinding]:
    inv = deps.scan(ctx)
    return [*_unreadable(inv), *vulnerable(ctx, inv.packages), *outdated_findings(ctx, inv)]


def run_vulnerable(ctx: AuditContext) -> list[AuditFinding]:
    inv = deps.scan(ctx)
    return [*_unreadable(inv), *vulnerable(ctx, inv.packages)]


def run_outdated(ctx: AuditContext) -> list[AuditFinding]:
    inv = deps.scan(ctx)
    return [*_unreadable(inv), *outdated_findings(ctx, inv)]


def _unreadable(inv: deps.Inventory) -> list[AuditFinding]:
    return [
        finding(
            UNREADABLE,
            Severity.INFO,
            f"could not read {where}",
            "Packages listed in a file the audit cannot read are not checked for vulnerabilities.",
            f"check {where} (its format, its permissions): {why}",
            where=where,
            subject=where,
        )
        for where, why in inv.unreadable
    ]


def database(
    ctx: AuditContext, packages: list[deps.Package], api: str = osv.API
) -> tuple[osv.Database | None, list[AuditFinding]]:
    """The vulnerability data for ``packages``, and the INFO findings on where it came from."""
    notes: list[AuditFinding] = []
    if ctx.online and packages:
        try:
            readable = [
                (p.ecosystem, p.name, p.version)
                for p in packages
                if versions.version_key(versions.family(p.ecosystem), p.version) is not None
            ]  # OSV's API refuses a batch with a version it cannot read (a git URL in a lockfile)
            return osv.query_online(readable, api=api), notes
        except osv.Unreachable as err:
            used = "used the offline file" if ctx.osv is not None else "no vulnerability data"
            other = (
                "keep the offline export current" if ctx.osv is not None else "pass an OSV export with --osv"
            )
            notes.append(
                finding(
                    NO_DATA,
                    Severity.INFO,
                    f"OSV API not reachable, {used}",
                    "Without current vulnerability data, packages with new advisories are not found.",
                    f"let this host reach api.osv.dev (HTTPS), or {other} (osv.dev's all.zip)",
                    subject="osv-api",
                    data={"error": str(err)},
                )
            )
    if ctx.osv is not None:
        return osv.load(ctx.osv), notes
    if not ctx.online:
        notes.append(
            finding(
                NO_DATA,
                Severity.INFO,
                "no vulnerability data",
                "Without vulnerability data the bots' and host's packages are not checked for known flaws.",
                "run the audit online (OSV's API) or pass an OSV export (osv.dev's all.zip) with --osv",
                subject="osv",
            )
        )
    return None, notes


def _owner(p: deps.Package) -> str:
    return f"bot {p.bot}'s" if p.bot else "the host's"


def _fix(p: deps.Package, fixed: str | None, vid: str) -> str:
    file = PurePosixPath(p.where).name
    if fixed is None:
        return (
            f"no fixed version of {p.name} is published: remove it or apply the advisory's workaround "
            f"(https://osv.dev/vulnerability/{vid})"
        )
    if p.kind == "dpkg":
        return f"upgrade the packages built from {p.name} to >= {fixed}: apt-get update && apt-get upgrade"
    if p.kind == "venv":
        pip = f"pip install '{p.name}>={fixed}'"
        return f"upgrade {p.name} to >= {fixed} in {_owner(p)} Python environment: {pip}"
    if p.kind == "node_modules":
        return f"upgrade {p.name} to >= {fixed} in {_owner(p)} node_modules: npm install {p.name}@{fixed}"
    return f"upgrade {p.name} to >= {fixed} in {_owner(p)} {file}"


def _next_fixed(p: deps.Package, fixed: Iterable[str]) -> str | None:
    """The lowest fixed version above the installed one."""
    above = []
    for v in fixed:
        try:
            if versions.compare(p.ecosystem, v, p.version) > 0:
                above.append(v)
        except ValueError:
            continue
    if not above:
        return None
    kind = versions.family(p.ecosystem)
    return min(above, key=lambda v: _Key(versions.version_key(kind, v)))


class _Key:
    def __init__(self, k: versions.Comparable | None) -> None:
        self.k = k

    def __lt__(self, other: _Key) -> bool:
        return self.k is not None and other.k is not None and self.k < other.k


def vulnerable(ctx: AuditContext, packages: list[deps.Package], api: str = osv.API) -> list[AuditFinding]:
    """``dependencies.vulnerable`` per (bot or host, package, vulnerability)."""
    db, out = database(ctx, packages, api)
    if db is None:
        return out
    seen: set[str] = set()
    for p in packages:
        for m in db.matches(p.ecosystem, p.name, p.version):
            scope = p.bot or "host"
            subject = f"{scope}:{p.ecosystem}:{p.name}:{m.id}"
            if subject in seen:
                continue
            seen.add(subject)
            cves = [a for a in m.aliases if a.startswith("CVE-")]
            ids = m.id + (f" ({', '.join(cves)})" if cves else "")
            fixed = _next_fixed(p, m.fixed)
            where = f"bot {p.bot}" if p.bot else "the host"
            out.append(
                finding(
                    VULNERABLE,
                    m.severity,
                    f"{p.name} {p.version} in {where}: {ids}" + (f" {m.summary}" if m.summary else ""),
                    f"{p.name} {p.version} has a published vulnerability, which attackers can look up "
                    "and exploit through what the package handles.",
                    _fix(p, fixed, m.id),
                    where=p.where,
                    subject=subject,
                    data={
                        "id": m.id,
                        "aliases": list(m.aliases),
                        "ecosystem": p.ecosystem,
                        "package": p.name,
                        "version": p.version,
                        "fixed": fixed,
                        "bot": p.bot,
                        "score": m.score,
                        "url": f"https://osv.dev/vulnerability/{m.id}",
                    },
                )
            )
    return out


def outdated_findings(ctx: AuditContext, inv: deps.Inventory) -> list[AuditFinding]:
    """``dependencies.outdated`` (LOW) for Debian packages with a newer candidate in the apt lists,
    and for the direct npm and PyPI packages when the audit may ask their registries."""
    out: list[AuditFinding] = []
    entries = [] if deps.debian_ecosystem(ctx) is None else _dpkg_entries(ctx)
    found_deb, problems = outdated.debian_outdated(ctx, entries)
    out += _unreadable(deps.Inventory(unreadable=problems))
    if found_deb:
        names = sorted({e.package for e, _ in found_deb})
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        out.append(
            finding(
                OUTDATED,
                Severity.LOW,
                f"{len(names)} Debian package{'s' if len(names) != 1 else ''} on the host "
                f"{'have' if len(names) != 1 else 'has'} a newer version in the apt lists: {shown}",
                "Updates carry security fixes; a host that lags behind keeps flaws that are already fixed.",
                "apt-get update && apt-get upgrade",
                where=deps.DPKG_STATUS,
                subject="host:deb",
                data={
                    "packages": [
                        {"package": e.package, "arch": e.arch, "version": e.version, "candidate": new}
                        for e, new in found_deb
                    ]
                },
            )
        )
    bots = [p for p in inv.packages if p.ecosystem in ("npm", "PyPI")]
    if not bots:
        return out
    if not ctx.online:
        out.append(
            finding(
                NOT_CHECKED,
                Severity.INFO,
                "the bots' npm and PyPI packages were not checked for newer versions (offline audit)",
                "Outdated packages miss fixes that are not advisories yet.",
                "run the audit online to ask the npm registry and the Python package index",
                subject="registries",
            )
        )
        return out
    found, notes = outdated.registry_outdated(bots)
    subjects: set[str] = set()
    for p, new in found:
        if f"{p.bot}:{p.ecosystem}:{p.name}" in subjects:
            continue
        subjects.add(f"{p.bot}:{p.ecosystem}:{p.name}")
        tool = f"npm install {p.name}@{new}" if p.ecosystem == "npm" else f"pip install '{p.name}=={new}'"
        out.append(
            finding(
                OUTDATED,
                Severity.LOW,
                f"{p.name} {p.version} in bot {p.bot}: {new} is available",
                "Updates carry security fixes; a bot that lags behind keeps flaws that are already fixed.",
                f"{tool} in {p.bot}'s project and update {PurePosixPath(p.where).name}",
                where=p.where,
                subject=f"{p.bot}:{p.ecosystem}:{p.name}",
                data={"package": p.name, "version": p.version, "latest": new, "bot": p.bot},
            )
        )
    for note in notes:
        out.append(
            finding(
                NOT_CHECKED,
                Severity.INFO,
                note,
                "Outdated packages miss fixes that are not advisories yet.",
                "check that this host reaches the registry (npm config get registry; pip config list)",
                subject=note,
            )
        )
    return out


def _dpkg_entries(ctx: AuditContext) -> list[deps.DpkgEntry]:
    try:
        return deps.parse_dpkg_status(ctx.path(deps.DPKG_STATUS))
    except OSError:
        return []
