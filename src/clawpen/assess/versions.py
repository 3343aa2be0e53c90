"""Version ordering the way each package ecosystem orders versions, and CVSS base scores.

- PyPI: PEP 440 (:class:`packaging.version.Version`: epochs, pre/post/dev releases);
- npm and OSV ``SEMVER`` ranges: Semantic Versioning 2.0 precedence (written here: a leading
  ``v``/``=`` as npm accepts, build metadata ignored, pre-release identifiers compared field by
  field, numeric ones numerically and below alphanumeric ones);
- Debian (and Ubuntu): dpkg's algorithm (python-debian's :class:`debian.debian_support.Version`:
  epochs, ``~`` sorting before anything, the revision).

:func:`cvss_score` computes a CVSS v3.0/v3.1 base score from its vector (OSV's ``severity[]``
gives vectors, not numbers).
"""

from __future__ import annotations

import math
import re
from typing import Any, Protocol

SEMVER_RE = re.compile(
    r"^[v=]?\s*(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


class Comparable(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


SemverKey = tuple[int, int, int, tuple[Any, ...]]


def semver_key(text: str) -> SemverKey | None:
    """The precedence key of a SemVer 2.0 version, or None when ``text`` is not one."""
    m = SEMVER_RE.match(text.strip())
    if m is None:
        return None
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        return (major, minor, patch, (1,))  # a release ranks above its pre-releases
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (major, minor, patch, (0, *ids))


def pypi_key(text: str) -> Comparable | None:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def debian_key(text: str) -> Comparable | None:
    from debian.debian_support import Version

    try:
        return Version(text)
    except ValueError:
        return None


def family(ecosystem: str) -> str:
    """``pypi``, ``semver`` or ``dpkg``: how ``ecosystem`` orders versions; ``""`` when unknown."""
    base = ecosystem.split(":", 1)[0].lower()
    if base == "pypi":
        return "pypi"
    if base == "npm":
        return "semver"
    if base in ("debian", "ubuntu"):
        return "dpkg"
    return ""


def version_key(kind: str, text: str) -> Comparable | None:
    """``text`` as an ordered value of the family ``kind`` (see :func:`family`), or None when it
    does not parse (or the family is unknown)."""
    if kind == "semver":
        return semver_key(text)
    if kind == "pypi":
        return pypi_key(text)
    if kind == "dpkg":
        return debian_key(text)
    return None


def compare(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b`` in ``ecosystem``; ValueError when
    either does not parse."""
    kind = family(ecosystem)
    ka, kb = version_key(kind, a), version_key(kind, b)
    if ka is None or kb is None:
        raise ValueError(f"cannot compare {a!r} and {b!r} as {ecosystem} versions")
    return -1 if ka < kb else (1 if kb < ka else 0)


# CVSS v3.x base metrics (FIRST's specification, section 7.4)
_AV = {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2}
_AC = {"L": 0.77, "H": 0.44}
_PR_U = {"N": 0.85, "L": 0.62, "H": 0.27}
_PR_C = {"N": 0.85, "L": 0.68, "H": 0.5}
_UI = {"N": 0.85, "R": 0.62}
_CIA = {"H": 0.56, "L": 0.22, "N": 0.0}


def _roundup(value: float) -> float:
    """CVSS v3.1's Roundup: the smallest one-decimal number >= value (without float noise)."""
    whole = round(value * 100000)
    if whole % 10000 == 0:
        return whole / 100000.0
    return (math.floor(whole / 10000) + 1) / 10.0


def cvss_score(vector: str) -> float | None:
    """The base score of a CVSS v3.0/3.1 vector (``CVSS:3.1/AV:N/AC:L/...``), or a plain number
    given as text; None for other versions or a vector missing a base metric."""
    text = vector.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = text.split("/")
    if not parts or parts[0] not in ("CVSS:3.0", "CVSS:3.1"):
        return None
    metrics = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
    try:
        changed = metrics["S"] == "C"
        iss = 1 - (1 - _CIA[metrics["C"]]) * (1 - _CIA[metrics["I"]]) * (1 - _CIA[metrics["A"]])
        pr = (_PR_C if changed else _PR_U)[metrics["PR"]]
        exploit = 8.22 * _AV[metrics["AV"]] * _AC[metrics["AC"]] * pr * _UI[metrics["UI"]]
    except KeyError:
        return None
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if changed else 6.42 * iss
    if impact <= 0:
        return 0.0
    return _roundup(min(1.08 * (impact + exploit), 10)) if changed else _roundup(min(impact + exploit, 10))
