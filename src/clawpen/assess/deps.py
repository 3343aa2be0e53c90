"""The packages a deployment runs: the bots' npm, pip and venv packages and the host's Debian ones.

:func:`inventory` looks in each bot's folders (its workspace, its filesystem mounts, its image
build context, its build inputs and its newest build output in clawpen's state) for

- npm ``package-lock.json``/``npm-shrinkwrap.json`` (lockfile v1 ``dependencies``, v2/v3
  ``packages``), else ``node_modules/**/package.json``;
- pip ``requirements*.txt`` pins (``name==version``);
- installed Python packages (``*.dist-info`` in a venv's or an image's site-packages);

and at the host's dpkg status (``Status: install ok installed``; by source package, the name
Debian's OSV records use). Every path is read through ``ctx.path`` so another root is audited
the same way; an unreadable file is reported, never a crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawpen.assess.hostread import read_untrusted
from clawpen.assess.model import AuditContext, shown_path
from clawpen.assess.osv import normalise

LOCKFILES = ("npm-shrinkwrap.json", "package-lock.json")
SKIP_DIRS = frozenset({".git", "__pycache__", ".cache", ".npm", ".hg", ".svn"})
MAX_DEPTH = 8  # below a bot folder: app/.venv/lib/python3.X/site-packages is 5
MAX_FILE = 64 << 20
MAX_DIRS = 20000  # folders searched below one bot folder
DPKG_STATUS = "/var/lib/dpkg/status"


@dataclass(frozen=True)
class Package:
    """One package version found: ``ecosystem`` as OSV names it (``npm``, ``PyPI``,
    ``Debian:12``), ``name`` normalised the ecosystem's way, ``where`` the file it was read from
    (as the audited system sees it), ``bot`` its bot (``""``: the host). ``direct``: the project
    asks for it itself (not only a dependency of a dependency)."""

    ecosystem: str
    name: str
    version: str
    where: str
    bot: str = ""
    direct: bool = True
    kind: str = ""  # npm-lock, node_modules, requirements, venv, dpkg


@dataclass
class Inventory:
    packages: list[Package] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (where, why)


@dataclass(frozen=True)
class DpkgEntry:
    """One installed binary package of the dpkg status file."""

    package: str
    arch: str
    version: str
    source: str
    source_version: str


def _read_json(path: Path) -> Any:
    return json.loads(read_untrusted(path, MAX_FILE))


def _manifest_deps(data: Any) -> set[str]:
    if not isinstance(data, dict):
        return set()
    out: set[str] = set()
    for key in ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies"):
        deps = data.get(key)
        if isinstance(deps, dict):
            out.update(str(k) for k in deps)
    return out


def _sibling_manifest(folder: Path) -> set[str] | None:
    try:
        return _manifest_deps(_read_json(folder / "package.json"))
    except (OSError, ValueError):
        return None


def parse_package_lock(path: Path) -> list[tuple[str, str, bool]]:
    """``(name, version, direct)`` of an npm lockfile (v1 ``dependencies``; v2/v3 ``packages``).
    Linked workspace members and entries without a version are left out."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError("not an npm lockfile (no JSON object)")
    out: list[tuple[str, str, bool]] = []
    packages = data.get("packages")
    if isinstance(packages, dict):
        root = packages.get("", {})
        direct = _manifest_deps(root) if root else (_sibling_manifest(path.parent) or set())
        for key, entry in packages.items():
            if not key or not isinstance(entry, dict) or entry.get("link") or "node_modules/" not in key:
                continue
            name = str(entry.get("name") or key.rsplit("node_modules/", 1)[1])
            version = entry.get("version")
            if isinstance(version, str) and version:
                out.append((name, version, key == f"node_modules/{name}" and name in direct))
        return out
    deps = data.get("dependencies")
    if not isinstance(deps, dict):
        return out
    manifest = _sibling_manifest(path.parent)

    def walk(tree: dict[str, Any], top: bool) -> None:
        for name, entry in tree.items():
            if not isinstance(entry, dict):
                continue
            version = entry.get("version")
            if isinstance(version, str) and version:
                out.append((str(name), version, top and (manifest is None or name in manifest)))
            nested = entry.get("dependencies")
            if isinstance(nested, dict):
                walk(nested, False)

    walk(deps, True)
    return out


def parse_node_modules(folder: Path) -> Iterator[tuple[str, str, Path]]:
    """``(name, version, package.json)`` of the packages installed in ``folder``
    (a ``node_modules``), nested ``node_modules`` included."""
    todo = [folder]
    while todo:
        nm = todo.pop()
        try:
            entries = sorted(nm.iterdir())
        except OSError:
            continue
        dirs: list[Path] = []
        for entry in entries:
            if entry.name.startswith("@") and entry.is_dir() and not entry.is_symlink():
                try:
                    dirs.extend(sorted(entry.iterdir()))
                except OSError:
                    continue
            elif not entry.name.startswith("."):
                dirs.append(entry)
        for pkg in dirs:
            if pkg.is_symlink() or not pkg.is_dir():
                continue
            manifest = pkg / "package.json"
            try:
                data = _read_json(manifest)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("version"), str):
                yield str(data.get("name") or pkg.name), str(data["version"]), manifest
            if (pkg / "node_modules").is_dir():
                todo.append(pkg / "node_modules")


def parse_requirements(path: Path) -> list[tuple[str, str]]:
    """``(name, version)`` of the exact pins (``==``/``===``, no wildcard) of a requirements file."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = read_untrusted(path, MAX_FILE).decode("utf-8", "replace").replace("\\\n", " ")
    out: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].split(" --", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
            out.append((req.name, specs[0].version))
    return out


def parse_dist_info(folder: Path) -> tuple[str, str] | None:
    """``(Name, Version)`` of an installed Python package's ``*.dist-info`` folder."""
    from email.parser import BytesHeaderParser

    meta = BytesHeaderParser().parsebytes(read_untrusted(folder / "METADATA", MAX_FILE))
    if "Name" not in meta or "Version" not in meta:
        return None
    name, version = meta["Name"], meta["Version"]
    return (str(name), str(version)) if name and version else None


def parse_dpkg_status(path: Path) -> list[DpkgEntry]:
    """The installed packages of a dpkg status file (``Status: install ok installed``)."""
    out: list[DpkgEntry] = []
    keep = {"package", "status", "version", "source", "architecture"}
    with path.open("r", encoding="utf-8", errors="replace") as f:
        stanza: dict[str, str] = {}
        for line in [*f, "\n"]:
            if line.strip() == "":
                if stanza.get("status", "").split() == ["install", "ok", "installed"] and "version" in stanza:
                    out.append(_dpkg_entry(stanza))
                stanza = {}
            elif not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                if key.lower() in keep:
                    stanza[key.lower()] = value.strip()
    return out


def _dpkg_entry(stanza: dict[str, str]) -> DpkgEntry:
    name, version = stanza["package"], stanza["version"]
    source, source_version = name, version
    if stanza.get("source"):
        src, _, rest = stanza["source"].partition("(")
        source = src.strip() or name
        if rest.strip().endswith(")"):
            source_version = rest.strip()[:-1].strip()
    return DpkgEntry(name, stanza.get("architecture", ""), version, source, source_version)


def debian_ecosystem(ctx: AuditContext) -> str | None:
    """``Debian:12`` (OSV's name for the audited root's release), ``Debian`` when the release is
    unknown (testing/sid), None when the root is not Debian."""
    fields: dict[str, str] = {}
    for name in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = ctx.path(name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip().strip("\"'")
        break
    if fields.get("ID") == "debian":
        release = fields.get("VERSION_ID", "")
        return f"Debian:{release.split('.')[0]}" if release else "Debian"
    if not fields:
        try:
            release = ctx.path("/etc/debian_version").read_text().strip()
        except OSError:
            return None
        head = release.split(".")[0]
        return f"Debian:{head}" if head.isdigit() else "Debian"
    return None


def bot_folders(ctx: AuditContext) -> list[tuple[str, Path]]:
    """``(bot, folder)`` for every folder of every bot of the spec at ``ctx.spec_path``."""
    if ctx.spec_path is None:
        return []
    from clawpen.spec.loader import load_spec

    loaded = load_spec(ctx.spec_path)
    base = str(loaded.base_dir)
    out: list[tuple[str, Path]] = []

    def add(bot: str, raw: str) -> None:
        path = Path(os.path.normpath(os.path.join(base, os.path.expanduser(raw))))
        if ctx.root != Path("/") and not path.is_relative_to(ctx.root):
            path = ctx.path(str(path))
        if path.is_file():
            path = path.parent
        if path.is_dir() and (bot, path) not in out:
            out.append((bot, path))

    for name, bot in loaded.spec.bots.items():
        if bot.workspace:
            add(name, bot.workspace)
        for raw in [*bot.filesystem.ro, *bot.filesystem.rw]:
            add(name, raw.partition(":")[0])
        image = bot.image
        if image is not None and not isinstance(image, str):
            add(name, image.context)
        if bot.build is not None:
            for raw in bot.build.inputs:
                add(name, raw)
            newest = _newest_build(ctx, name)
            if newest is not None:
                add(name, str(newest))
    return out


def _newest_build(ctx: AuditContext, bot: str) -> Path | None:
    """The bot's newest build output: clawpen.daemon.build_steps keeps them in
    ``<state>-build/<bot>/<key>/`` and touches the one in use."""
    if ctx.state_dir is None:
        return None
    folder = Path(f"{ctx.state_dir}-build") / bot
    try:
        outs = [
            p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "cache"
        ]
    except OSError:
        return None
    return max(outs, key=lambda p: p.stat().st_mtime) if outs else None


def scan_folder(ctx: AuditContext, bot: str, folder: Path, inv: Inventory) -> None:
    """Add the packages found under ``folder`` to ``inv``."""
    seen: set[Path] = set()
    for count, (dirpath, dirnames, filenames) in enumerate(os.walk(folder)):
        here = Path(dirpath)
        if count >= MAX_DIRS:
            why = f"the search stopped after {MAX_DIRS} folders; packages below the rest were not read"
            inv.unreadable.append((shown_path(ctx, folder), why))
            return
        depth = len(here.relative_to(folder).parts)
        names = set(filenames)
        lock = next((here / n for n in LOCKFILES if n in names), None)
        if lock is not None:
            _add_lock(ctx, bot, lock, inv)
        elif "node_modules" in dirnames:
            _add_node_modules(ctx, bot, here, inv)
        for name in sorted(names):
            if name.startswith("requirements") and name.endswith(".txt"):
                _add_requirements(ctx, bot, here / name, inv)
        if here.name in ("site-packages", "dist-packages"):
            for sub in sorted(dirnames):
                if sub.endswith(".dist-info") and here / sub not in seen:
                    seen.add(here / sub)
                    _add_dist_info(ctx, bot, here / sub, inv)
            dirnames[:] = []
            continue
        dirnames[:] = (
            []
            if depth >= MAX_DEPTH
            else sorted(d for d in dirnames if d not in SKIP_DIRS and d != "node_modules")
        )


def _add_lock(ctx: AuditContext, bot: str, lock: Path, inv: Inventory) -> None:
    where = shown_path(ctx, lock)
    try:
        rows = parse_package_lock(lock)
    except (OSError, ValueError) as err:
        inv.unreadable.append((where, str(err)))
        return
    for name, version, direct in rows:
        inv.packages.append(Package("npm", name, version, where, bot, direct, "npm-lock"))


def _add_node_modules(ctx: AuditContext, bot: str, project: Path, inv: Inventory) -> None:
    direct = _sibling_manifest(project)
    for name, version, manifest in parse_node_modules(project / "node_modules"):
        top = manifest.parent.parent == project / "node_modules" or manifest.parent.parent.parent == (
            project / "node_modules"
        )
        is_direct = top and (direct is None or name in direct)
        where = shown_path(ctx, manifest)
        inv.packages.append(Package("npm", name, version, where, bot, is_direct, "node_modules"))


def _add_requirements(ctx: AuditContext, bot: str, path: Path, inv: Inventory) -> None:
    where = shown_path(ctx, path)
    try:
        rows = parse_requirements(path)
    except (OSError, ValueError) as err:
        inv.unreadable.append((where, str(err)))
        return
    for name, version in rows:
        inv.packages.append(
            Package("PyPI", normalise("PyPI", name), version, where, bot, True, "requirements")
        )


def _add_dist_info(ctx: AuditContext, bot: str, folder: Path, inv: Inventory) -> None:
    try:
        found = parse_dist_info(folder)
    except (OSError, ValueError) as err:
        inv.unreadable.append((shown_path(ctx, folder), str(err)))
        return
    if found is not None:
        where = shown_path(ctx, folder.parent)
        inv.packages.append(Package("PyPI", normalise("PyPI", found[0]), found[1], where, bot, True, "venv"))


def host_packages(ctx: AuditContext, inv: Inventory) -> list[DpkgEntry]:
    """The host's installed Debian packages, added to ``inv`` by source package (OSV's Debian
    records name source packages and their versions); returns the binary entries."""
    ecosystem = debian_ecosystem(ctx)
    path = ctx.path(DPKG_STATUS)
    if ecosystem is None or not path.exists():
        return []
    try:
        entries = parse_dpkg_status(path)
    except OSError as err:
        inv.unreadable.append((DPKG_STATUS, err.strerror or str(err)))
        return []
    for src, ver in sorted({(e.source, e.source_version) for e in entries}):
        inv.packages.append(Package(ecosystem, src, ver, DPKG_STATUS, "", True, "dpkg"))
    return entries


def scan(ctx: AuditContext) -> Inventory:
    """Every package of the bots' folders and of the host, with the files that could not be read."""
    inv = Inventory()
    for bot, folder in bot_folders(ctx):
        scan_folder(ctx, bot, folder, inv)
    host_packages(ctx, inv)
    unique = dict.fromkeys(inv.packages)
    inv.packages = list(unique)
    return inv


def inventory(ctx: AuditContext) -> list[Package]:
    """The packages of the bots and the host (see the module's doc)."""
    return scan(ctx).packages
