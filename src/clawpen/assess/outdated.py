"""Newer versions than the installed ones (the practice's weekly dependency check).

- Debian: the newest candidate in the root's apt lists (``/var/lib/apt/lists/*_Packages``, as
  the last ``apt-get update`` left them), per binary package and architecture;
- npm: ``npm view NAME version --json`` (the registry npm is configured with), when npm exists;
- PyPI: the JSON simple API (PEP 691/700) of the index pip is configured with (``PIP_INDEX_URL``,
  else ``pip config list``'s ``index-url``, else PyPI).

The registries are asked only when the audit may go online, for the packages a project asks for
itself (its direct dependencies), at most :data:`MAX_QUERIES` of them.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from clawpen.assess import versions
from clawpen.assess.deps import DpkgEntry, Package
from clawpen.assess.model import AuditContext

APT_LISTS = "/var/lib/apt/lists"
DEFAULT_INDEX = "https://pypi.org/simple"
MAX_QUERIES = 200
LIST_NAMES = ("Packages", "Packages.gz", "Packages.xz", "Packages.lz4", "Packages.zst")
TIMEOUT = 15.0


APT_HELPER = "/usr/lib/apt/apt-helper"  # `cat-file` reads every compression apt stores lists in


def _lines(path: Path) -> Iterator[str]:
    """The text lines of an apt list, plain or compressed (gz and xz here, lz4 and zstd through
    apt's own apt-helper, which is on every Debian host)."""
    if path.name.endswith("_Packages"):
        with path.open("r", encoding="utf-8", errors="replace") as f:
            yield from f
    elif path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            yield from f
    elif path.suffix == ".xz":
        with lzma.open(path, "rt", encoding="utf-8", errors="replace") as f:
            yield from f
    else:
        if not os.access(APT_HELPER, os.X_OK):
            raise OSError(f"{path.suffix} lists need {APT_HELPER}, which is not installed")
        with subprocess.Popen(
            [APT_HELPER, "cat-file", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        ) as proc:
            assert proc.stdout is not None
            yield from proc.stdout
        if proc.returncode != 0:
            raise OSError(f"apt-helper cat-file failed with exit code {proc.returncode}")


def apt_candidates(
    ctx: AuditContext, wanted: set[str] | None = None
) -> tuple[dict[tuple[str, str], str], list[tuple[str, str]]]:
    """The newest version of each ``(package, architecture)`` in the root's apt lists (only the
    ``wanted`` packages when given), and the lists that could not be read ``(where, why)``."""
    best: dict[tuple[str, str], str] = {}
    keys: dict[tuple[str, str], versions.Comparable] = {}
    problems: list[tuple[str, str]] = []
    folder = ctx.path(APT_LISTS)
    lists = sorted(p for p in folder.glob("*_Packages*") if p.name.rsplit("_", 1)[-1] in LIST_NAMES)
    for path in lists:
        try:
            pkg = arch = ver = ""
            for line in [*_lines(path), "\n"]:
                if line.strip() == "":
                    if pkg and ver and (wanted is None or pkg in wanted):
                        k = versions.debian_key(ver)
                        old = keys.get((pkg, arch))
                        if k is not None and (old is None or old < k):
                            keys[(pkg, arch)], best[(pkg, arch)] = k, ver
                    pkg = arch = ver = ""
                elif line.startswith("Package:"):
                    pkg = line[8:].strip()
                elif line.startswith("Architecture:"):
                    arch = line[13:].strip()
                elif line.startswith("Version:"):
                    ver = line[8:].strip()
        except (OSError, EOFError, lzma.LZMAError) as err:
            problems.append((f"{APT_LISTS}/{path.name}", str(err)))
    return best, problems


def debian_outdated(
    ctx: AuditContext, entries: Iterable[DpkgEntry]
) -> tuple[list[tuple[DpkgEntry, str]], list[tuple[str, str]]]:
    """``(installed entry, newer candidate)`` for each installed package the apt lists have a
    newer version of, and the lists that could not be read."""
    entries = list(entries)
    cands, problems = apt_candidates(ctx, {e.package for e in entries})
    out: list[tuple[DpkgEntry, str]] = []
    for e in entries:
        cand = cands.get((e.package, e.arch)) or cands.get((e.package, "all"))
        if cand is None:
            continue
        have, new = versions.debian_key(e.version), versions.debian_key(cand)
        if have is not None and new is not None and have < new:
            out.append((e, cand))
    return out, problems


def npm_latest(name: str, npm: str) -> str | None:
    """The registry's ``latest`` version of ``name`` (``npm view``), or None when it cannot say."""
    try:
        proc = subprocess.run(
            [npm, "view", name, "version", "--json"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        value = json.loads(proc.stdout)
    except ValueError:
        return None
    if isinstance(value, list):
        value = value[-1] if value else None
    return value if isinstance(value, str) else None


def pip_index() -> str:
    """The index pip is configured with (its simple API's address)."""
    env = os.environ.get("PIP_INDEX_URL")
    if env:
        return env.rstrip("/")
    pip = shutil.which("pip3") or shutil.which("pip")
    if pip is not None:
        try:
            proc = subprocess.run(
                [pip, "config", "list"], capture_output=True, text=True, timeout=TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            proc = None
        for line in proc.stdout.splitlines() if proc is not None else []:
            key, sep, value = line.partition("=")
            if sep and key.strip().endswith(".index-url"):
                return value.strip().strip("'\"").rstrip("/")
    return DEFAULT_INDEX


def pypi_latest(name: str, index: str, client: object) -> str | None:
    """The newest final release of ``name`` on ``index`` (PEP 700's ``versions`` list of the
    PEP 691 JSON simple page), or None when the index cannot say."""
    import httpx
    from packaging.version import InvalidVersion, Version

    assert isinstance(client, httpx.Client)
    try:
        resp = client.get(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        resp.raise_for_status()
        listed = resp.json().get("versions") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    best: Version | None = None
    for raw in listed:
        try:
            v = Version(str(raw))
        except InvalidVersion:
            continue
        if not v.is_prerelease and (best is None or best < v):
            best = v
    return str(best) if best is not None else None


def registry_outdated(packages: Iterable[Package]) -> tuple[list[tuple[Package, str]], list[str]]:
    """``(package, newer version)`` for the direct npm and PyPI packages, asking their registries;
    and notes on what could not be asked (no npm, an index that did not answer)."""
    import httpx

    wanted = [p for p in packages if p.direct and p.ecosystem in ("npm", "PyPI")]
    notes: list[str] = []
    if len(wanted) > MAX_QUERIES:
        notes.append(f"only the first {MAX_QUERIES} of {len(wanted)} npm and PyPI packages were checked")
        wanted = wanted[:MAX_QUERIES]
    npm = shutil.which("npm")
    if npm is None and any(p.ecosystem == "npm" for p in wanted):
        notes.append("npm is not installed, so the npm packages were not checked for newer versions")
    index = pip_index() if any(p.ecosystem == "PyPI" for p in wanted) else DEFAULT_INDEX
    latest: dict[tuple[str, str], str | None] = {}
    out: list[tuple[Package, str]] = []
    failed: dict[str, list[str]] = {}
    with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
        for p in wanted:
            key = (p.ecosystem, p.name)
            if key not in latest:
                if p.ecosystem == "npm":
                    latest[key] = npm_latest(p.name, npm) if npm is not None else None
                else:
                    latest[key] = pypi_latest(p.name, index, client)
                if latest[key] is None and (p.ecosystem != "npm" or npm is not None):
                    failed.setdefault(p.ecosystem, []).append(p.name)
            new = latest[key]
            if new is None:
                continue
            try:
                if versions.compare(p.ecosystem, p.version, new) < 0:
                    out.append((p, new))
            except ValueError:
                continue
    for eco, names in sorted(failed.items()):
        where = "the npm registry" if eco == "npm" else index
        notes.append(f"{where} gave no version of {', '.join(names)}: not checked for newer versions")
    return out, notes
