"""The dependency inventory (npm lockfiles, node_modules, pip pins, venvs, dpkg) and the
dependency checks' findings, on files written into a temporary root."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from clawpen.assess import depaudit, deps, outdated
from clawpen.assess.model import AuditContext, Severity

DATA = Path(__file__).resolve().parent.parent / "data" / "osv"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_lockfile_v1_nested_dependencies_and_direct(tmp_path: Path) -> None:
    write(tmp_path / "package.json", '{"dependencies": {"express": "^4"}}')
    lock = tmp_path / "package-lock.json"
    lock.write_text(
        json.dumps(
            {
                "lockfileVersion": 1,
                "dependencies": {
                    "express": {"version": "4.17.1", "requires": {"qs": "6.7.0"}},
                    "qs": {"version": "6.7.0"},
                    "body-parser": {"version": "1.19.0", "dependencies": {"qs": {"version": "6.5.0"}}},
                },
            }
        )
    )
    assert sorted(deps.parse_package_lock(lock)) == [
        ("body-parser", "1.19.0", False),
        ("express", "4.17.1", True),
        ("qs", "6.5.0", False),
        ("qs", "6.7.0", False),
    ]


def test_lockfile_v3_packages_scoped_nested_links(tmp_path: Path) -> None:
    lock = tmp_path / "package-lock.json"
    lock.write_text(
        json.dumps(
            {
                "lockfileVersion": 3,
                "packages": {
                    "": {
                        "name": "app",
                        "dependencies": {"lodash": "^4", "@scope/x": "1"},
                        "devDependencies": {"jest": "1"},
                    },
                    "node_modules/lodash": {"version": "4.17.20"},
                    "node_modules/@scope/x": {"version": "1.0.0"},
                    "node_modules/jest": {"version": "29.0.0", "dev": True},
                    "node_modules/a/node_modules/lodash": {"version": "3.10.1"},
                    "node_modules/member": {"resolved": "packages/member", "link": True},
                    "packages/member": {"name": "member", "version": "0.1.0"},
                    "node_modules/aliased": {"name": "real-name", "version": "2.0.0"},
                },
            }
        )
    )
    assert sorted(deps.parse_package_lock(lock)) == [
        ("@scope/x", "1.0.0", True),
        ("jest", "29.0.0", True),
        ("lodash", "3.10.1", False),
        ("lodash", "4.17.20", True),
        ("real-name", "2.0.0", False),
    ]


def test_bad_lockfile_is_reported_not_raised(tmp_path: Path) -> None:
    write(tmp_path / "spec" / "clawpen.toml", '[bots.web]\ncommand = ["true"]\nworkspace = "../ws"\n')
    write(tmp_path / "ws" / "package-lock.json", "{broken")
    inv = deps.scan(AuditContext(root=tmp_path, live=False, spec_path=tmp_path / "spec" / "clawpen.toml"))
    assert inv.packages == []
    assert [w for w, _ in inv.unreadable] == ["/ws/package-lock.json"]
    [f] = depaudit.run_vulnerable(
        AuditContext(root=tmp_path, live=False, spec_path=tmp_path / "spec" / "clawpen.toml", osv=DATA)
    )
    assert (f.check, f.severity, f.where) == (
        "dependencies.unreadable",
        Severity.INFO,
        "/ws/package-lock.json",
    )


def test_node_modules_without_lockfile(tmp_path: Path) -> None:
    write(tmp_path / "package.json", '{"dependencies": {"lodash": "*", "@s/y": "*"}}')
    nm = tmp_path / "node_modules"
    write(nm / "lodash" / "package.json", '{"name": "lodash", "version": "4.17.20"}')
    write(nm / "@s" / "y" / "package.json", '{"name": "@s/y", "version": "1.0.0"}')
    write(nm / "a" / "package.json", '{"name": "a", "version": "2.0.0"}')
    write(nm / "a" / "node_modules" / "minimist" / "package.json", '{"name": "minimist", "version": "1.2.5"}')
    write(nm / ".bin" / "package.json", '{"name": "nope", "version": "1.0.0"}')
    write(nm / "broken" / "package.json", "{")
    found = sorted((n, v) for n, v, _ in deps.parse_node_modules(nm))
    assert found == [("@s/y", "1.0.0"), ("a", "2.0.0"), ("lodash", "4.17.20"), ("minimist", "1.2.5")]
    inv = deps.Inventory()
    deps.scan_folder(AuditContext(root=tmp_path, live=False), "b", tmp_path, inv)
    direct = {p.name: p.direct for p in inv.packages}
    assert direct == {"@s/y": True, "a": False, "lodash": True, "minimist": False}
    assert {p.where for p in inv.packages if p.name == "lodash"} == {"/node_modules/lodash/package.json"}


def test_requirements_pins_only(tmp_path: Path) -> None:
    req = write(
        tmp_path / "requirements.txt",
        """\
        # pinned
        urllib3==1.26.4  # comment
        Requests[socks]==2.25.0 ; python_version >= "3"
        certifi==2021.5.30 \\
            --hash=sha256:50b1e4f8446b06f41be7dd6338db18e0990601dce795c2b1686458aa7e8fa7d8
        flask>=2.0
        django==3.*
        arbitrary===1.0-weird
        -r other.txt
        --index-url https://example.org/simple
        -e git+https://example.org/x.git#egg=x
        not a requirement ===
        """,
    )
    assert deps.parse_requirements(req) == [
        ("urllib3", "1.26.4"),
        ("Requests", "2.25.0"),
        ("certifi", "2021.5.30"),
        ("arbitrary", "1.0-weird"),
    ]


def test_venv_dist_info(tmp_path: Path) -> None:
    site = tmp_path / "app" / ".venv" / "lib" / "python3.11" / "site-packages"
    write(
        site / "urllib3-1.26.4.dist-info" / "METADATA",
        "Metadata-Version: 2.1\nName: urllib3\nVersion: 1.26.4\n\n",
    )
    write(
        site / "Zope.Interface-5.0.dist-info" / "METADATA",
        "Metadata-Version: 2.1\nName: Zope.Interface\nVersion: 5.0\n",
    )
    (site / "empty-1.0.dist-info").mkdir()
    write(site / "urllib3" / "__init__.py", "")
    inv = deps.Inventory()
    deps.scan_folder(AuditContext(root=tmp_path, live=False), "py", tmp_path, inv)
    assert sorted((p.ecosystem, p.name, p.version, p.kind) for p in inv.packages) == [
        ("PyPI", "urllib3", "1.26.4", "venv"),
        ("PyPI", "zope-interface", "5.0", "venv"),
    ]
    assert inv.packages[0].where == "/app/.venv/lib/python3.11/site-packages"


DPKG = """\
Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u2
Description: GNU C Library
 continuation line: Version: 9

Package: libc-bin
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u2

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2

Package: libfoo1
Status: install ok installed
Architecture: amd64
Source: foo (1.2-3)
Version: 1.2-3+b1

Package: removed
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
"""


def debian_root(root: Path, release: str = "12") -> None:
    write(root / "etc" / "os-release", f'PRETTY_NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="{release}"\n')
    write(root / "var" / "lib" / "dpkg" / "status", DPKG)


def test_dpkg_status_by_source_package(tmp_path: Path) -> None:
    debian_root(tmp_path)
    entries = deps.parse_dpkg_status(tmp_path / "var/lib/dpkg/status")
    assert [(e.package, e.source, e.source_version) for e in entries] == [
        ("libc6", "glibc", "2.36-9+deb12u2"),
        ("libc-bin", "glibc", "2.36-9+deb12u2"),
        ("bash", "bash", "5.2.15-2+b2"),
        ("libfoo1", "foo", "1.2-3"),
    ]
    ctx = AuditContext(root=tmp_path, live=False)
    assert sorted((p.ecosystem, p.name, p.version) for p in deps.inventory(ctx)) == [
        ("Debian:12", "bash", "5.2.15-2+b2"),
        ("Debian:12", "foo", "1.2-3"),
        ("Debian:12", "glibc", "2.36-9+deb12u2"),
    ]


def test_debian_release_names(tmp_path: Path) -> None:
    ctx = AuditContext(root=tmp_path, live=False)
    assert deps.debian_ecosystem(ctx) is None
    write(tmp_path / "etc" / "debian_version", "12.7\n")
    assert deps.debian_ecosystem(ctx) == "Debian:12"
    write(tmp_path / "etc" / "os-release", "ID=debian\nPRETTY_NAME=trixie/sid\n")
    assert deps.debian_ecosystem(ctx) == "Debian"
    write(tmp_path / "etc" / "os-release", 'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n')
    assert deps.debian_ecosystem(ctx) is None


def make_deployment(root: Path, lodash: str = "4.17.20", urllib3: str = "1.26.4") -> Path:
    """A spec with two bots: web (npm lockfile in its app mount) and py (a pinned requirements
    file and a venv in its workspace)."""
    spec = write(
        root / "srv" / "clawpen.toml",
        """\
        [bots.web]
        command = ["node", "/app/bot.js"]
        workspace = "./web-data"
        filesystem = { ro = ["./web:/app"] }

        [bots.py]
        command = ["python3", "/workspace/bot.py"]
        workspace = "./py-data"
        """,
    )
    (root / "srv" / "web-data").mkdir(parents=True)
    (root / "srv" / "web" / "package-lock.json").parent.mkdir(parents=True)
    (root / "srv" / "web" / "package-lock.json").write_text(
        json.dumps(
            {
                "lockfileVersion": 3,
                "packages": {
                    "": {"dependencies": {"lodash": "^4"}},
                    "node_modules/lodash": {"version": lodash},
                    "node_modules/minimist": {"version": "1.2.6"},
                },
            }
        )
    )
    write(root / "srv" / "py-data" / "requirements.txt", f"urllib3=={urllib3}\n")
    return spec


def test_audit_finds_the_vulnerable_packages_and_not_the_fixed_ones(tmp_path: Path) -> None:
    spec = make_deployment(tmp_path)
    debian_root(tmp_path)
    ctx = AuditContext(root=tmp_path, live=False, spec_path=spec, osv=DATA)
    found = {f.subject: f for f in depaudit.run_vulnerable(ctx)}
    assert sorted(found) == [
        "host:Debian:12:glibc:DSA-5514-1",
        "py:PyPI:urllib3:GHSA-q2q7-5pp4-w6pg",
        "web:npm:lodash:GHSA-35jh-r3h4-6jhm",
    ]
    lodash = found["web:npm:lodash:GHSA-35jh-r3h4-6jhm"]
    assert lodash.check == "dependencies.vulnerable" and lodash.severity is Severity.HIGH
    assert (
        lodash.title
        == "lodash 4.17.20 in bot web: GHSA-35jh-r3h4-6jhm (CVE-2021-23337) Command Injection in lodash"
    )
    assert lodash.fix == "upgrade lodash to >= 4.17.21 in bot web's package-lock.json"
    assert lodash.where == "/srv/web/package-lock.json"
    assert lodash.data["url"] == "https://osv.dev/vulnerability/GHSA-35jh-r3h4-6jhm"
    assert (
        found["py:PyPI:urllib3:GHSA-q2q7-5pp4-w6pg"].fix
        == "upgrade urllib3 to >= 1.26.5 in bot py's requirements.txt"
    )
    glibc = found["host:Debian:12:glibc:DSA-5514-1"]
    assert glibc.severity is Severity.HIGH  # no severity in the record: unknown counts as high
    assert (
        glibc.fix
        == "upgrade the packages built from glibc to >= 2.36-9+deb12u3: apt-get update && apt-get upgrade"
    )
    assert glibc.where == "/var/lib/dpkg/status"
    # positive control: the fixed versions give no finding
    spec = make_deployment(tmp_path / "fixed", lodash="4.17.21", urllib3="1.26.5")
    ctx = AuditContext(root=tmp_path / "fixed", live=False, spec_path=spec, osv=DATA)
    assert depaudit.run_vulnerable(ctx) == []


def test_minimist_fix_is_the_next_fixed_version(tmp_path: Path) -> None:
    write(
        tmp_path / "a" / "package-lock.json",
        json.dumps(
            {
                "lockfileVersion": 1,
                "dependencies": {
                    "minimist": {"version": "0.0.8"},
                    "other": {"version": "1.0.0", "dependencies": {"minimist": {"version": "1.2.5"}}},
                },
            }
        ),
    )
    inv = deps.Inventory()
    deps.scan_folder(AuditContext(root=tmp_path, live=False), "cli", tmp_path / "a", inv)
    [f] = depaudit.vulnerable(AuditContext(root=tmp_path, live=False, osv=DATA), inv.packages)
    assert (
        f.severity is Severity.CRITICAL
        and f.fix == "upgrade minimist to >= 0.2.4 in bot cli's package-lock.json"
    )
    second = [p for p in inv.packages if p.version == "1.2.5"]
    [g] = depaudit.vulnerable(AuditContext(root=tmp_path, live=False, osv=DATA), second)
    assert g.fix == "upgrade minimist to >= 1.2.6 in bot cli's package-lock.json"


def test_no_data_and_unreachable_api_are_info(tmp_path: Path) -> None:
    pkgs = [deps.Package("npm", "lodash", "4.17.20", "/x/package-lock.json", "web")]
    [f] = depaudit.vulnerable(AuditContext(root=tmp_path, live=False), pkgs)
    assert (f.check, f.severity, f.title) == ("dependencies.no_data", Severity.INFO, "no vulnerability data")
    online = AuditContext(root=tmp_path, live=False, online=True)
    [g] = depaudit.vulnerable(online, pkgs, api="http://127.0.0.1:9")
    assert (g.severity, g.title) == (Severity.INFO, "OSV API not reachable, no vulnerability data")
    both = AuditContext(root=tmp_path, live=False, online=True, osv=DATA)
    info, vuln = depaudit.vulnerable(both, pkgs, api="http://127.0.0.1:9")
    assert info.title == "OSV API not reachable, used the offline file"
    assert vuln.data["id"] == "GHSA-35jh-r3h4-6jhm"


APT_LIST = """\
Package: bash
Architecture: amd64
Version: 5.2.15-2+b7

Package: bash
Architecture: amd64
Version: 5.2.15-2+b2

Package: libc6
Architecture: amd64
Version: 2.36-9+deb12u2

Package: unrelated
Architecture: amd64
Version: 9.9
"""


def test_outdated_debian_from_apt_lists(tmp_path: Path) -> None:
    import gzip

    debian_root(tmp_path)
    lists = tmp_path / "var" / "lib" / "apt" / "lists"
    write(lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages", APT_LIST)
    sec = "Package: libfoo1\nArchitecture: amd64\nVersion: 1.2-3+deb12u1\n"
    (lists / "security_main_binary-amd64_Packages.gz").write_bytes(gzip.compress(sec.encode()))
    (lists / "broken_main_binary-amd64_Packages.gz").write_bytes(b"not gzip")
    ctx = AuditContext(root=tmp_path, live=False)
    found = depaudit.outdated_findings(ctx, deps.scan(ctx))
    info = [f for f in found if f.severity is Severity.INFO]
    assert [f.where for f in info] == ["/var/lib/apt/lists/broken_main_binary-amd64_Packages.gz"]
    [low] = [f for f in found if f.check == "dependencies.outdated"]
    assert (
        low.severity is Severity.LOW
        and low.subject == "host:deb"
        and low.fix == "apt-get update && apt-get upgrade"
    )
    assert [(p["package"], p["candidate"]) for p in low.data["packages"]] == [
        ("bash", "5.2.15-2+b7"),
        ("libfoo1", "1.2-3+deb12u1"),
    ]
    assert low.title.startswith(
        "2 Debian packages on the host have a newer version in the apt lists: bash, libfoo1"
    )
    # positive control: nothing newer, nothing reported
    write(
        lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages",
        "Package: bash\nVersion: 5.2.15-2+b2\n",
    )
    (lists / "security_main_binary-amd64_Packages.gz").unlink()
    (lists / "broken_main_binary-amd64_Packages.gz").unlink()
    assert depaudit.outdated_findings(ctx, deps.scan(ctx)) == []


def test_outdated_registries_only_online(tmp_path: Path) -> None:
    spec = make_deployment(tmp_path)
    ctx = AuditContext(root=tmp_path, live=False, spec_path=spec)
    [f] = depaudit.outdated_findings(ctx, deps.scan(ctx))
    assert (f.check, f.severity) == ("dependencies.not_checked", Severity.INFO)


def test_pip_index_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple/")
    assert outdated.pip_index() == "https://mirror.example/simple"


def test_bot_folders_cover_workspace_mounts_and_build_output(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "clawpen.toml",
        """\
        [bots.b]
        command = ["true"]
        workspace = "./ws"
        filesystem = { ro = ["./code:/app", "./conf/app.json:/etc/app.json"] }

        [bots.b.build]
        steps = [["true"]]
        inputs = ["./code/package.json"]
        """,
    )
    for d in ("ws", "code", "conf"):
        (tmp_path / d).mkdir()
    write(tmp_path / "code" / "package.json", "{}")
    write(tmp_path / "conf" / "app.json", "{}")
    state = tmp_path / "state"
    old, new = tmp_path / "state-build" / "b" / "k1", tmp_path / "state-build" / "b" / "k2"
    old.mkdir(parents=True)
    new.mkdir()
    (tmp_path / "state-build" / "b" / "cache").mkdir()
    import os

    os.utime(old, (1, 1))
    ctx = AuditContext(root=tmp_path, live=False, spec_path=spec, state_dir=state)
    assert deps.bot_folders(ctx) == [
        ("b", tmp_path / "ws"),
        ("b", tmp_path / "code"),
        ("b", tmp_path / "conf"),
        ("b", new),
    ]


def test_spec_paths_outside_the_root_are_read_inside_it(tmp_path: Path) -> None:
    """Auditing a mounted root: the spec's absolute paths name folders of that root."""
    root = tmp_path / "root"
    write(root / "srv" / "ws" / "requirements.txt", "urllib3==1.26.4\n")
    spec = write(tmp_path / "spec" / "clawpen.toml", '[bots.py]\ncommand = ["true"]\nworkspace = "/srv/ws"\n')
    ctx = AuditContext(root=root, live=False, spec_path=spec, osv=DATA)
    assert deps.bot_folders(ctx) == [("py", root / "srv" / "ws")]
    found = depaudit.run(ctx)
    assert [(f.check, f.subject) for f in found] == [
        ("dependencies.vulnerable", "py:PyPI:urllib3:GHSA-q2q7-5pp4-w6pg"),
        ("dependencies.not_checked", "registries"),
    ]
    assert found[0].where == "/srv/ws/requirements.txt"


def test_a_huge_folder_is_searched_only_so_far(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deps, "MAX_DIRS", 3)
    for d in ("a", "b", "c", "d"):
        write(tmp_path / "ws" / d / "requirements.txt", "six==1.0.0\n")
    inv = deps.Inventory()
    deps.scan_folder(AuditContext(root=tmp_path, live=False), "b", tmp_path / "ws", inv)
    assert [p.where for p in inv.packages] == ["/ws/a/requirements.txt", "/ws/b/requirements.txt"]
    assert inv.unreadable == [
        ("/ws", "the search stopped after 3 folders; packages below the rest were not read")
    ]
