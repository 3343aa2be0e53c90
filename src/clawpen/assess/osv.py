"""Known vulnerabilities from the OSV database (https://ossf.github.io/osv-schema/).

:class:`Database` holds OSV records, from an offline export (:func:`load`: a zip in the format
of OSV's per-ecosystem ``all.zip``, one ``<ID>.json`` per record; a folder of such files; or one
JSON file holding a record or a list of them) or from OSV's API (:func:`query_online`:
``/v1/querybatch`` for the ids, ``/v1/vulns/ID`` for each record). :meth:`Database.matches`
evaluates a package version against the records' ``affected[]`` entries the way the schema says:
``versions[]`` lists, and ``ECOSYSTEM``/``SEMVER`` ranges of introduced/fixed/last_affected
events, in the ecosystem's own version order (:mod:`clawpen.assess.versions`).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawpen.assess import versions
from clawpen.assess.model import Severity
from clawpen.errors import ConfigError

API = "https://api.osv.dev"
MAX_RECORD_BYTES = 16 << 20
BATCH = 500  # querybatch's own limit is 1000 queries
FETCHERS = 8  # records fetched at once
MAX_PAGES = 20  # querybatch pages followed for a package with many records


def normalise(ecosystem: str, name: str) -> str:
    """A package name the ecosystem's way: PEP 503 for PyPI, npm and Debian names as they are."""
    if ecosystem.split(":", 1)[0].lower() == "pypi":
        from packaging.utils import canonicalize_name

        return str(canonicalize_name(name))
    return name


def same_ecosystem(record: str, package: str) -> bool:
    """``record`` (an OSV ``affected[].package.ecosystem``) covers ``package``'s ecosystem: equal,
    or ``Debian`` without a release against ``Debian:12`` (and the other way round)."""
    if record == package:
        return True
    rb, _, rr = record.partition(":")
    pb, _, pr = package.partition(":")
    return rb.lower() == pb.lower() and (not rr or not pr or rr.split(":")[0] == pr.split(":")[0])


@dataclass(frozen=True)
class Match:
    """A vulnerability that affects one package version."""

    id: str
    aliases: tuple[str, ...]
    summary: str
    severity: Severity
    fixed: tuple[str, ...]  # the fixed versions of the ranges that matched (may be empty)
    score: float | None = None


@dataclass
class Database:
    """OSV records indexed by (ecosystem base, normalised package name)."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    _index: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)

    def add(self, record: dict[str, Any], where: str = "") -> None:
        rid = record.get("id")
        if not isinstance(rid, str) or not rid:
            raise ConfigError(
                "an OSV record has no id",
                where=where,
                hint="use an OSV export (records as in the OSV schema)",
            )
        if rid in self.records or record.get("withdrawn"):
            return
        self.records[rid] = record
        for aff in record.get("affected") or []:
            pkg = aff.get("package") if isinstance(aff, dict) else None
            if not isinstance(pkg, dict):
                continue
            eco, name = str(pkg.get("ecosystem", "")), str(pkg.get("name", ""))
            if eco and name:
                key = (eco.split(":", 1)[0].lower(), normalise(eco, name))
                self._index.setdefault(key, []).append((rid, aff))

    def __len__(self) -> int:
        return len(self.records)

    def matches(self, ecosystem: str, name: str, version: str) -> list[Match]:
        """The records affecting ``name`` at ``version`` in ``ecosystem`` (sorted by id)."""
        key = (ecosystem.split(":", 1)[0].lower(), normalise(ecosystem, name))
        found: dict[str, Match] = {}
        for rid, aff in self._index.get(key, []):
            if not same_ecosystem(str(aff["package"]["ecosystem"]), ecosystem):
                continue
            hit, fixed = affected(aff, ecosystem, version)
            if not hit:
                continue
            record = self.records[rid]
            sev, score = severity_of(record)
            old = found.get(rid)
            fixes = tuple(sorted({*fixed, *(old.fixed if old else ())}))
            found[rid] = Match(
                rid, tuple(record.get("aliases") or ()), str(record.get("summary") or ""), sev, fixes, score
            )
        return [found[k] for k in sorted(found)]


def _events_sorted(events: list[dict[str, str]], kind: str) -> list[tuple[str, str]] | None:
    """``(type, version)`` events in version order (``introduced: "0"`` first); None when a
    version does not parse in the ecosystem's order."""
    keyed: list[tuple[int, Any, int, str, str]] = []
    order = {"introduced": 0, "last_affected": 1, "fixed": 1, "limit": 1}
    for ev in events:
        for typ, ver in ev.items():
            if typ not in order:
                continue
            if typ == "introduced" and ver == "0":
                keyed.append((0, 0, 0, typ, ver))
                continue
            k = versions.version_key(kind, str(ver))
            if k is None:
                return None
            keyed.append((1, k, order[typ], typ, str(ver)))
    zero = [t for t in keyed if t[0] == 0]
    rest = sorted((t for t in keyed if t[0] == 1), key=_SortKey)
    return [(t[3], t[4]) for t in zero + rest]


class _SortKey:
    """Sort key for (flag, version key, order, ...) tuples whose version keys are comparable
    among themselves only."""

    def __init__(self, t: tuple[int, Any, int, str, str]) -> None:
        self.k, self.o = t[1], t[2]

    def __lt__(self, other: _SortKey) -> bool:
        if self.k < other.k:
            return True
        if other.k < self.k:
            return False
        return self.o < other.o


def in_range(events: list[dict[str, str]], kind: str, version: str) -> tuple[bool, list[str]]:
    """Whether ``version`` is affected by one OSV range's events (the schema's evaluation: the
    last event at or below the version decides), and the range's fixed versions."""
    fixed = [str(ev["fixed"]) for ev in events if "fixed" in ev]
    ordered = _events_sorted(events, kind)
    v = versions.version_key(kind, version)
    if ordered is None or v is None:
        return False, fixed
    hit = False
    for typ, ver in ordered:
        if typ == "introduced":
            if ver == "0" or not v < _key(kind, ver):
                hit = True
        elif typ in ("fixed", "limit"):
            if not v < _key(kind, ver):
                hit = False
        elif typ == "last_affected" and _key(kind, ver) < v:
            hit = False
    return hit, fixed


def _key(kind: str, text: str) -> Any:
    return versions.version_key(kind, text)


def affected(aff: dict[str, Any], ecosystem: str, version: str) -> tuple[bool, list[str]]:
    """Whether one ``affected[]`` entry covers ``version``, and the fixed versions it names."""
    kind = versions.family(ecosystem)
    listed = [str(v) for v in aff.get("versions") or []]
    fixed: list[str] = []
    hit = version in listed
    if not hit and kind and listed:
        v = versions.version_key(kind, version)
        hit = v is not None and any(
            (k := versions.version_key(kind, x)) is not None and not (k < v or v < k) for x in listed
        )
    for rng in aff.get("ranges") or []:
        typ = str(rng.get("type", ""))
        if typ == "SEMVER":
            r_hit, r_fixed = in_range(list(rng.get("events") or []), "semver", version)
        elif typ == "ECOSYSTEM" and kind:
            r_hit, r_fixed = in_range(list(rng.get("events") or []), kind, version)
        else:
            continue  # GIT ranges name commits, not versions
        fixed += r_fixed
        hit = hit or r_hit
    return hit, fixed if hit else []


GHSA_LEVELS = {"CRITICAL": Severity.CRITICAL, "HIGH": Severity.HIGH, "MODERATE": Severity.MEDIUM,
               "MEDIUM": Severity.MEDIUM, "LOW": Severity.LOW}  # fmt: skip


def from_score(score: float) -> Severity:
    if score >= 9:
        return Severity.CRITICAL
    if score >= 7:
        return Severity.HIGH
    if score >= 4:
        return Severity.MEDIUM
    return Severity.LOW


def severity_of(record: dict[str, Any]) -> tuple[Severity, float | None]:
    """The record's severity: ``database_specific.severity`` (GitHub's labels), else the highest
    CVSS v3 base score in ``severity[]``; unknown counts as high."""
    scores = [
        s
        for entry in record.get("severity") or []
        if isinstance(entry, dict) and (s := versions.cvss_score(str(entry.get("score", "")))) is not None
    ]
    best = max(scores) if scores else None
    label = str((record.get("database_specific") or {}).get("severity") or "").upper()
    if label in GHSA_LEVELS:
        return GHSA_LEVELS[label], best
    if best is not None:
        return from_score(best), best
    return Severity.HIGH, None


def _records(raw: Any, where: str) -> Iterator[dict[str, Any]]:
    items = raw if isinstance(raw, list) else [raw]
    for item in items:
        if not isinstance(item, dict):
            raise ConfigError(
                "an OSV file holds something other than a record", where=where, hint="use an OSV JSON export"
            )
        yield item


def _parse(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"the OSV file is not JSON: {err}",
            where=where,
            hint="use an OSV export (all.zip or its JSON files)",
        ) from None


def load(path: Path, db: Database | None = None) -> Database:
    """The records of an offline OSV export at ``path`` (zip, folder or JSON file)."""
    db = db if db is not None else Database()
    hint = "pass an OSV export: an ecosystem's all.zip from OSV, a folder of its JSON files, or a JSON file"
    try:
        if path.is_dir():
            for file in sorted(path.rglob("*.json")):
                for rec in _records(_parse(file.read_bytes(), str(file)), str(file)):
                    db.add(rec, str(file))
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir() or not info.filename.endswith(".json"):
                        continue
                    where = f"{path}:{info.filename}"
                    if info.file_size > MAX_RECORD_BYTES:
                        raise ConfigError("an OSV record is larger than 16 MiB", where=where, hint=hint)
                    for rec in _records(_parse(zf.read(info), where), where):
                        db.add(rec, where)
        else:
            for rec in _records(_parse(path.read_bytes(), str(path)), str(path)):
                db.add(rec, str(path))
    except FileNotFoundError:
        raise ConfigError(f"the OSV file {path} does not exist", where=str(path), hint=hint) from None
    except (OSError, zipfile.BadZipFile) as err:
        raise ConfigError(f"cannot read the OSV file {path}: {err}", where=str(path), hint=hint) from None
    return db


class Unreachable(Exception):
    """OSV's API did not answer (or answered nonsense)."""


def query_online(
    packages: Iterable[tuple[str, str, str]],
    db: Database | None = None,
    *,
    api: str = API,
    timeout: float = 10.0,
) -> Database:
    """Ask OSV's API which records affect the ``(ecosystem, name, version)`` packages and fetch
    them into ``db``; :class:`Unreachable` when the API cannot be used."""
    import httpx

    db = db if db is not None else Database()
    queries = [{"package": {"ecosystem": e, "name": n}, "version": v} for e, n, v in dict.fromkeys(packages)]
    ids: set[str] = set()
    try:
        with httpx.Client(timeout=timeout) as client:
            for _ in range(MAX_PAGES):
                more: list[dict[str, Any]] = []
                for start in range(0, len(queries), BATCH):
                    batch = queries[start : start + BATCH]
                    resp = client.post(f"{api}/v1/querybatch", json={"queries": batch})
                    resp.raise_for_status()
                    for query, result in zip(batch, resp.json().get("results") or [], strict=False):
                        ids.update(str(v["id"]) for v in (result or {}).get("vulns") or [])
                        if (result or {}).get("next_page_token"):  # more ids for this package
                            more.append({**query, "page_token": result["next_page_token"]})
                if not more:
                    break
                queries = more

            def fetch(rid: str) -> Any:
                resp = client.get(f"{api}/v1/vulns/{rid}")
                resp.raise_for_status()
                return resp.json()

            with ThreadPoolExecutor(max_workers=FETCHERS) as pool:
                wanted = sorted(ids - set(db.records))
                for rid, record in zip(wanted, pool.map(fetch, wanted), strict=True):
                    db.add(record, f"{api}/v1/vulns/{rid}")
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as err:
        raise Unreachable(f"{type(err).__name__}: {err}") from None
    return db
