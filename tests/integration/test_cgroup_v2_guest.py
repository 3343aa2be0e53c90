"""The sandbox tier's cgroup tests on pure cgroup v2, in a QEMU guest (cgroup2_guest.py).

This host runs cgroup v1/hybrid; most users' hosts run pure cgroup v2. The guest's only cgroup
hierarchy is cgroup2 at /sys/fs/cgroup (the kernel gets cgroup_no_v1=all), and pytest runs there
as root, in CI mode (a skip fails), on the cgroup tests of the sandbox tier: limits, OOM, pids,
the freezer, kill and removal (cgroups.py against the kernel), and the same through
``clawpen run`` (bubblewrap, seccomp, the bot's uid): a memory bomb, a CPU hog, a double-forked
daemon, no cgroup left after a run and the stale cgroup of a SIGKILLed run swept
up by the next one; and adoption at the tier (a new NamespaceTier finds a running sandbox from
its record, reads its cgroup, kills and removes it).

Left out, and why (they measure speed, which an emulated CPU does not have):
test_cgroups_real.py::test_create_and_remove_are_fast (a median under 5 ms) and the daemon's
adoption test (test_daemon.py: the daemon must start within 15 s and adopt within 5 s; under TCG
its imports alone take 15-20 s; test_sandbox_adopt.py covers adoption without a daemon), and
test_containment.py::test_fork_bomb_is_contained (it counts the bomb's processes from /proc
while they hold for 1.5 s: too short for a scan under TCG; pids.max is covered by
test_pids_max_stops_forks, and the tier's pids limit by test_sandbox_adopt.py).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cgroup2_guest import RESULTS, run

BOOT_AND_RUN = 540  # seconds: 2.5 minutes under TCG on this 2-core machine, 4.5 when it is busy
pytestmark = [
    pytest.mark.root,
    pytest.mark.bwrap,
    pytest.mark.vm,
    pytest.mark.slow,
    pytest.mark.timeout(BOOT_AND_RUN + 60),
]

REPO = Path(__file__).resolve().parents[2]
TESTS = (
    "tests/integration/test_cgroups_real.py",
    "tests/integration/test_containment.py::test_memory_bomb_is_oom_killed",
    "tests/integration/test_containment.py::test_cpu_hog_is_held_to_its_quota",
    "tests/integration/test_containment.py::test_double_forked_daemon_dies_with_the_run",
    "tests/integration/test_run_lifecycle.py::test_no_zombie_and_no_cgroup_after_a_run",
    "tests/integration/test_run_lifecycle.py::test_sigkilled_clawpen_takes_its_bot_along_and_the_next_run_sweeps_up",
    "tests/integration/test_sandbox_adopt.py::test_a_new_tier_adopts_a_running_sandbox_and_kills_it_through_its_cgroup",
)
DESELECT = ("tests/integration/test_cgroups_real.py::test_create_and_remove_are_fast",)
# What the guest must have run (test_cgroups_real.py's parametrized tests run once: "v2").
EXPECTED = {
    "test_add_kill_remove_sleep[v2]",
    "test_limits_are_written",
    "test_pids_max_stops_forks",
    "test_memory_limit_oom_kills",
    "test_cpu_quota_throttles",
    "test_kill_gets_escaped_and_forking_processes[v2]",
    "test_freeze_stops_every_member_and_thaw_lets_them_run[v2]",
    "test_stale_cgroup_is_recreated",
    *(t.rsplit("::", 1)[1] for t in TESTS if "::" in t),
}
# Printed in the guest before pytest starts: what /sys/fs/cgroup is, and that no v1 hierarchy is.
PROBE = (
    'echo "cgroupfs=$(stat -f -c %T /sys/fs/cgroup)"; '
    'echo "controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"; '
    'echo "v1-mounts=$(grep -c " cgroup " /proc/self/mounts)"; '
    'exec "$@"'
)


def test_the_sandbox_tiers_cgroup_tests_pass_on_pure_cgroup_v2(tmp_path: Path) -> None:
    venv_python = str(Path(sys.prefix) / "bin" / "python")
    junit = f"{RESULTS}/junit.xml"
    pytest_argv = [venv_python, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
    pytest_argv += ["--basetemp=/tmp/pt-guest", f"--junitxml={junit}", *TESTS]
    pytest_argv += [f"--deselect={t}" for t in DESELECT]
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "CI": "true",  # nothing may be skipped
        "PYTHONDONTWRITEBYTECODE": "1",  # the repository is read-only in the guest
    }
    done = run(
        ["/bin/sh", "-c", PROBE, "probe", *pytest_argv],
        env=env,
        cwd=str(REPO),
        work=tmp_path,
        timeout=BOOT_AND_RUN,
    )
    report = done.report()
    # the guest ran on cgroup v2 alone, with the controllers clawpen uses
    assert "cgroupfs=cgroup2fs" in done.out and "v1-mounts=0" in done.out, report
    controllers = next(line for line in done.out.splitlines() if line.startswith("controllers=")).split("=")[
        1
    ]
    assert {"memory", "cpu", "pids", "io"} <= set(controllers.split()), report
    assert done.status == "exit 0", report  # pytest passed (status is the init's report)
    suite = ET.parse(done.results / "junit.xml").getroot().find("testsuite")
    assert suite is not None, report
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, report
    ran = {case.get("name", "") for case in suite.iter("testcase")}
    assert ran == EXPECTED, (sorted(ran ^ EXPECTED), report)
    assert counts["tests"] == len(EXPECTED)
