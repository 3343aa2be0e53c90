"""Shared test set-up. In CI (CI=true) nothing may be skipped: a missing requirement fails."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TESTS = Path(__file__).resolve().parent

# scripts/test.sh runs the suite as pytest processes in parallel, one per group (--group):
# "wait" holds the tests that mostly wait (package downloads, timers, dockerd) and every test
# marked `docker`; "main" holds the rest (CPU-bound). Entries are paths under tests/, or a path
# and a test function ("path::name"); the split follows measured durations (README.md, Development).
WAIT_GROUP = frozenset(
    {
        # npm and pip downloads through the gateway (~330 s and ~110 s)
        "integration/test_openclaw_e2e.py",
        "integration/test_templates.py",
        # restic snapshots, restores and tier copies (~290 s)
        "integration/test_storage_tiers.py",
        "integration/test_rollback_data.py",
        "integration/test_snapshot_lifecycle.py",
        "integration/test_snapshot_schedule.py",
        "integration/test_snapshots.py",
        # log shipping across receiver outages of 10-30 s (~3 min)
        "integration/test_ship_real.py",
        "integration/test_ship_daemon.py",
        # a build step waiting on its stall timer (~30 s)
        "integration/test_build_stall_net.py",
        # npm and pip against their registries (the dependency audit, ~10 s)
        "integration/test_assess_deps_real.py",
    }
)
GROUPS = ("main", "wait", "vm")


def _requirement_missing(marker: str) -> str | None:
    if marker == "root" and os.geteuid() != 0:
        return "needs root"
    if marker == "bwrap" and not shutil.which("bwrap"):
        return "needs bubblewrap (apt-get install bubblewrap)"
    if marker == "docker":
        from tests.integration.container_env import ensure_dockerd

        return ensure_dockerd()  # starts dockerd when installed and none runs
    if marker == "podman":
        from tests.integration.container_env import ensure_dockerd, ensure_podman

        # Podman's service, started when installed and none runs, with the base image (from Docker's)
        return ensure_dockerd() or ensure_podman()
    if marker == "netns" and (os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft")):
        return "needs root, iproute2 and nftables (apt-get install iproute2 nftables)"
    if marker == "vm":
        from tests.integration.vm_env import missing

        return missing()
    if marker == "hostroot":
        from tests.integration.hostroot import missing as hostroot_missing

        return hostroot_missing()
    if marker == "etcd" and not (shutil.which("etcd") and shutil.which("etcdctl")):
        return "needs etcd (apt-get install etcd-server etcd-client)"
    if marker == "browser" and not shutil.which("chromium"):
        return "needs Debian's chromium (apt-get install chromium)"
    if marker == "prometheus" and not shutil.which("prometheus"):
        return "needs Prometheus (apt-get install prometheus)"
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--group",
        choices=GROUPS,
        default=None,
        help="run only this group of scripts/test.sh's parallel split (tests/conftest.py WAIT_GROUP)",
    )


def group_of(item: pytest.Item) -> str:
    """The group of scripts/test.sh's split a test runs in: "wait" or "main"."""
    if item.get_closest_marker("vm"):  # QEMU guests: CPU-bound, a part of their own
        return "vm"
    if item.get_closest_marker("hostroot"):  # a debootstrap root and Lynis runs: long, a part apart
        return "vm"
    if item.get_closest_marker("docker") or item.get_closest_marker("podman"):
        return "wait"
    path = item.path.resolve()
    rel = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else str(path)
    name = getattr(item, "originalname", item.name)
    return "wait" if rel in WAIT_GROUP or f"{rel}::{name}" in WAIT_GROUP else "main"


def pytest_configure(config: pytest.Config) -> None:
    missing = [e for e in WAIT_GROUP if not (TESTS / e.split("::")[0]).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py WAIT_GROUP names no such test file: {sorted(missing)}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group = config.getoption("--group")
    if group is None:
        return
    keep = [item for item in items if group_of(item) == group]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if group_of(item) != group])
        items[:] = keep


def unavailable(missing: str) -> NoReturn:
    """A test's requirement is missing: skipped on a developer's machine, a failure in CI."""
    if IN_CI:
        pytest.fail(f"{missing} (CI must run every test)")
    pytest.skip(missing)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in ("root", "bwrap", "docker", "podman", "netns", "vm", "browser", "prometheus", "hostroot"):
        if item.get_closest_marker(marker):
            missing = _requirement_missing(marker)
            if missing:
                unavailable(missing)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.integration.container_env import stop_started_podman

    # a dockerd the tests started stays: another group may still use it (scripts/test.sh stops it);
    # Podman's service is stopped by the session that started it, when no other session uses it
    stop_started_podman()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if IN_CI and reporter is not None and reporter.stats.get("skipped"):
        reporter.write_line("CI: skipped tests count as failures", red=True)
        session.exitstatus = 1


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private clawpen state directory (CLAWPEN_HOME)."""
    home = tmp_path / "state"
    home.mkdir()
    monkeypatch.setenv("CLAWPEN_HOME", str(home))
    yield home


@pytest.fixture(autouse=True)
def _reap_adopted_sandboxes() -> Iterator[None]:
    """Reap bubblewrap zombies that were re-parented to this pytest process.

    Tests that run the namespace tier in-process make pytest a child subreaper (as the tier
    makes every clawpen process). From then on, a sandbox whose daemon a test SIGKILLs (crash
    safety) becomes pytest's child when the daemon dies, and pytest, unlike clawpen, never
    waits for it: its exit would leave a zombie that later tests count as a leak of their own.
    Only exited bwrap children are reaped; nothing a test still holds a Popen for is touched.
    """
    yield
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        state, ppid = stat[stat.rfind(")") + 2 :].split()[:2]
        if state == "Z" and int(ppid) == me and comm == "bwrap":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)
