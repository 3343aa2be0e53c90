"""A command entered into a container bot (`clawpen exec`, `cmd` health checks) is held by the
container's own limits, with real Docker: it joins the engine's cgroup of the container (under
clawpen's ``clawpen/<bot>.<replica>``, which carries none of the limits), as ``docker exec`` does.

Found by `validate --hostile` work: before, an entered command ran in clawpen's parent cgroup,
outside the container's memory, pids and devices cgroups.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from container_env import BASE_IMAGE, container_daemon, ensure_base_image

pytestmark = [pytest.mark.root, pytest.mark.docker]
HOG = """
import sys
blocks = []
for _ in range(int(sys.argv[1])):
    b = bytearray(1 << 20)
    b[::4096] = b"x" * 256  # touch every page
    blocks.append(b)
print("allocated", len(blocks))
"""
FORKS = """
import os, sys, time
kids = 0
for _ in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except OSError as e:
        print("refused", e.errno)
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    kids += 1
print("forked", kids)
"""


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[tuple[Any, Any, bytes]]:
    from clawpen.container.tier import ContainerTier
    from clawpen.daemon.lifecycle import instance_plan
    from clawpen.paths import cache_dir
    from clawpen.plan.build import HostFacts
    from clawpen.sandbox.seccomp import bpf_for, default_policy
    from clawpen.spec.loader import parse_spec_text

    ensure_base_image()
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True, mode=0o700)
    spec = tmp_path / "clawpen.toml"
    spec.write_text(
        f'[bots.enterme]\ntier = "container"\nimage = "{BASE_IMAGE}"\ncommand = ["sleep", "300"]\n'
        'resources = { memory = "64M", pids = 24 }\n'
    )
    policy = parse_spec_text(spec.read_text(), spec).spec.bots["enterme"]
    plan = instance_plan(
        policy, "enterme", 0, str(tmp_path), state_dir=state, host=HostFacts.probe(), seccomp=default_policy()
    )
    sandbox = ContainerTier(state).start(plan, cgroup_name="test-enter.0")  # clawpen-test-enter-0
    try:
        yield sandbox, plan, bpf_for(plan.seccomp, cache_dir(state))
    finally:
        sandbox.kill()
        sandbox.teardown()
        subprocess.run(["docker", "rm", "-f", "clawpen-test-enter-0"], capture_output=True, check=False)


def _entered(bot: tuple[Any, Any, bytes], *argv: str) -> tuple[int, str]:
    sandbox, plan, bpf = bot
    proc = sandbox.enter(plan, list(argv), bpf=bpf, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out.decode()


def test_an_entered_command_is_in_the_containers_cgroups(bot: tuple[Any, Any, bytes]) -> None:
    code, out = _entered(bot, "cat", "/proc/self/cgroup")
    assert code == 0
    init = Path(f"/proc/{bot[0].pid}/cgroup").read_text()
    assert out == init  # every hierarchy, the engine's container cgroup (not clawpen's parent)
    placed = [line for line in init.splitlines() if "name=clawpen-favor" not in line]  # not the engine's
    assert all(line.split(":", 2)[2].startswith("/clawpen/test-enter.0/") for line in placed)


def test_an_entered_command_is_held_by_the_containers_memory_and_pids_limits(
    bot: tuple[Any, Any, bytes],
) -> None:
    # positive controls: within the limits the same programs work
    assert _entered(bot, "python3", "-c", HOG, "16") == (0, "allocated 16\n")
    assert _entered(bot, "python3", "-c", FORKS, "4") == (0, "forked 4\n")
    # past the memory limit (64M, swap off): the OOM killer ends it
    code, out = _entered(bot, "python3", "-c", HOG, "160")
    assert code in (-9, 137) and "allocated" not in out, (code, out)
    # past the pids limit (24, the init and the helper count): fork is refused
    code, out = _entered(bot, "python3", "-c", FORKS, "40")
    assert code == 0 and out.startswith("refused 11\nforked "), out
    assert int(out.split()[-1]) < 24


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    with container_daemon(tmp_path / "state") as d:
        yield d


def test_clawpen_exec_into_a_container_bot_is_held_by_its_memory_limit(daemon: Any) -> None:
    daemon.write(f"""
        [bots.held]
        tier = "container"
        image = "{BASE_IMAGE}"
        command = ["sleep", "300"]
        [bots.held.resources]
        memory = "64M"
        pids = 24
    """)
    daemon.cli("up")
    row = daemon.wait_state("held", "running")
    got = daemon.cli("exec", "held", "--", "cat", "/proc/self/cgroup")
    assert got.stdout == Path(f"/proc/{row['pid']}/cgroup").read_text()  # the container's own cgroup
    ok = daemon.cli("exec", "held", "--", "python3", "-c", HOG, "16", check=False)
    assert (ok.returncode, ok.stdout) == (0, "allocated 16\n"), ok  # positive control
    hog = daemon.cli("exec", "held", "--", "python3", "-c", HOG, "160", check=False)
    assert hog.returncode == 137 and "allocated" not in hog.stdout, hog  # OOM-killed at 64M
