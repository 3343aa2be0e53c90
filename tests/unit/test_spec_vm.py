"""``tier = "vm"`` in the spec (issue 17, item 1): the ``vm`` table, its defaults, its refusals.

Each refusal is checked through the CLI (``clawpen plan -f``: exit 2, the field's path, a hint)
with a positive control that differs only in the refused value. The stored policy (and its
hash) of sandbox and container bots is what it was before the vm tier existed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clawpen.cli import main
from clawpen.daemon.store import policy_hash
from clawpen.errors import ClawpenError, PolicyError
from clawpen.plan.build import HostFacts, build_plan
from clawpen.plan.model import Identity, Plan, SeccompPolicy
from clawpen.spec.loader import parse_spec_text
from clawpen.spec.policy import BotPolicy
from clawpen.spec.vm import DEFAULT_MEMORY, GUEST_OVERHEAD, MIB, VmSettings, modules_dir

IDENT = Identity("a", 1_900_000_123, 1_900_000_123)
SECCOMP = SeccompPolicy(errno_syscalls=("mount",))
VM = 'tier = "vm"\ncommand = ["sleep", "300"]\n'
GIB = 1 << 30


def write(tmp_path: Path, body: str) -> Path:
    spec = tmp_path / "clawpen.toml"
    spec.write_text("[bots.a]\n" + body)
    return spec


def policy_of(tmp_path: Path, body: str) -> BotPolicy:
    spec = write(tmp_path, body)
    return parse_spec_text(spec.read_text(), spec).spec.bots["a"].to_policy("a", str(tmp_path))


def plan_of(tmp_path: Path, body: str, host: HostFacts | None = None) -> Plan:
    return build_plan(policy_of(tmp_path, body), IDENT, host or HostFacts.probe(), SECCOMP)


def cli_plan(tmp_path: Path, body: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``clawpen plan -f SPEC a``: its exit code and what it printed on stderr."""
    code = main(["plan", "-f", str(write(tmp_path, body)), "a"])
    return code, capsys.readouterr().err


def kernel_tree(root: Path, release: str = "6.1.0-28-amd64", modules: bool = True) -> Path:
    """An unpacked kernel package (``dpkg-deb -x``): boot/vmlinuz-RELEASE, lib/modules/RELEASE."""
    (root / "boot").mkdir(parents=True)
    kernel = root / "boot" / f"vmlinuz-{release}"
    kernel.write_bytes(b"MZ not really a kernel")
    if modules:
        (root / "lib" / "modules" / release / "kernel").mkdir(parents=True)
    return kernel


def mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


# accepted specs -----------------------------------------------------------------------------------


def test_a_vm_bot_without_a_table_gets_the_defaults(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, VM)
    assert plan.vm == VmSettings("auto", DEFAULT_MEMORY, 1, "host", ())
    assert plan.to_dict()["vm"] == {"kernel": "auto", "memory": GIB, "cpus": 1, "rootfs": "host", "ports": []}
    assert plan_of(tmp_path, 'command = ["true"]\n').vm is None  # positive control: the sandbox tier


def test_memory_and_cpus_come_from_resources_when_set_and_the_table_wins(tmp_path: Path) -> None:
    res = 'resources = { memory = "768M", cpus = 1.5 }\n'
    vm = plan_of(tmp_path, VM + res).vm
    # the bot keeps its 768M inside the guest (a cgroup there); the guest gets its kernel's share on top
    assert vm is not None and (vm.memory, vm.cpus) == (768 * MIB + GUEST_OVERHEAD, 2)  # cpus rounded up
    vm = plan_of(tmp_path, VM + "resources = { cpus = 0.25 }\n").vm
    assert vm is not None and (vm.memory, vm.cpus) == (GIB, 1)  # memory unset: 1G, not 512M
    vm = plan_of(tmp_path, VM + res + 'vm = { memory = "1.5G", cpus = 1, kernel = "auto" }\n').vm
    assert vm is not None and (vm.memory, vm.cpus, vm.kernel) == (3 * GIB // 2, 1, "auto")
    vm = plan_of(tmp_path, VM + "vm = { memory = 268435456 }\n").vm  # plain bytes, as other sizes
    assert vm is not None and vm.memory == 256 * MIB


def test_forwarded_guest_ports_are_the_published_and_health_ports(tmp_path: Path) -> None:
    body = VM + 'network = { publish = ["127.0.0.1:18080:8080", "18443:8443"] }\n'
    vm = plan_of(tmp_path, body + 'health = { http = "http://127.0.0.1/healthz" }\n').vm
    assert vm is not None and vm.ports == (80, 8080, 8443)  # an http URL without a port: 80
    vm = plan_of(tmp_path, body + 'health = { tcp = "127.0.0.1:8080" }\n').vm
    assert vm is not None and vm.ports == (8080, 8443)  # one port forwarded once
    vm = plan_of(tmp_path, VM).vm
    assert vm is not None and vm.ports == ()


def test_a_kernel_of_an_unpacked_package_and_an_image_root_are_accepted(tmp_path: Path) -> None:
    kernel = kernel_tree(tmp_path / "k")
    (tmp_path / "rootfs" / "usr").mkdir(parents=True)
    vm = plan_of(tmp_path, VM + f'vm = {{ kernel = "{kernel}", rootfs = "image:rootfs" }}\n').vm
    assert vm is not None and vm.kernel == str(kernel)
    assert vm.rootfs == f"image:{tmp_path}/rootfs" and vm.image_root == f"{tmp_path}/rootfs"
    assert modules_dir(str(kernel)) == str(tmp_path / "k" / "lib" / "modules" / "6.1.0-28-amd64")


def test_clawpen_plan_shows_the_vm_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, VM + 'network = { publish = ["18080:8080"] }\nvm = { memory = "256M" }\n')
    assert main(["plan", "-f", str(spec), "a"]) == 0
    out = capsys.readouterr().out
    assert "vm        kernel auto, memory 256M, cpus 1, rootfs host, forwarded guest ports 8080" in out
    assert main(["plan", "--json", "-f", str(spec), "a"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["vm"]["memory"] == 256 * MIB


# the stored policy of other tiers -------------------------------------------------------------------


def test_sandbox_and_container_bots_keep_their_stored_policy_and_hash(tmp_path: Path) -> None:
    """Hashes computed with clawpen at 34d6c69 (before the vm table existed) for these bots."""
    cases = {
        'command = ["sleep", "300"]\nreplicas = 2\n': "bd136503dffa3e3b",
        'tier = "container"\nimage = "debian:12"\ncommand = ["sleep", "300"]\n'
        'resources = { memory = "1G", cpus = 1.5 }\n': "753df0f288d8f83f",
    }
    for body, digest in cases.items():
        spec = write(tmp_path, body)
        dumped = parse_spec_text(spec.read_text(), spec).spec.bots["a"].model_dump(mode="json", by_alias=True)
        assert "vm" not in dumped
        assert policy_hash({"spec": dumped, "base_dir": "/srv/bots"}) == digest
    spec = write(tmp_path, VM)  # positive control: a vm bot stores its tier and table
    dumped = parse_spec_text(spec.read_text(), spec).spec.bots["a"].model_dump(mode="json", by_alias=True)
    assert dumped["tier"] == "vm" and "vm" not in dumped
    spec = write(tmp_path, VM + "vm = { cpus = 1 }\n")
    dumped = parse_spec_text(spec.read_text(), spec).spec.bots["a"].model_dump(mode="json", by_alias=True)
    assert dumped["vm"]["cpus"] == 1


# refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "said"),
    [
        ('command = ["true"]\nvm = { cpus = 1 }\n', "vm", "runs in the sandbox tier"),
        (
            'tier = "container"\nimage = "debian:12"\ncommand = ["true"]\nvm = { cpus = 1 }\n',
            "vm",
            "runs in the container tier",
        ),
        (VM + 'image = "debian:12"\n', "image", "images are for the container tier"),
        (VM + 'engine = "podman"\n', "engine", "not a container engine"),
        (VM + 'vm = { kernel = "boot/vmlinuz-6.1" }\n', "vm.kernel", "absolute path"),
        (VM + 'vm = { kernel = "/boot/bzImage" }\n', "vm.kernel", "vmlinuz-RELEASE"),
        (VM + 'vm = { rootfs = "disk:/srv/img" }\n', "vm.rootfs", "image:PATH"),
        (VM + 'vm = { rootfs = "image:" }\n', "vm.rootfs", "image:PATH"),
        (VM + "vm = { cpus = 0 }\n", "vm.cpus", ""),
        (VM + 'vm = { memory = "lots" }\n', "vm.memory", "not a size"),
        (VM + "vm = { swap = true }\n", "vm.swap", ""),
        ('tier = "vmm"\ncommand = ["true"]\n', "tier", "no tier 'vmm'"),
    ],
)
def test_a_malformed_vm_spec_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, field: str, said: str
) -> None:
    code, err = cli_plan(tmp_path, body, capsys)
    assert code == 2, err
    assert f"bots.a.{field}" in err and said in err and "hint:" in err, err
    assert cli_plan(tmp_path, VM, capsys)[0] == 0  # positive control


def test_a_kernel_without_its_modules_or_missing_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = kernel_tree(tmp_path / "good")
    bare = kernel_tree(tmp_path / "bare", release="6.1.0-99-nowhere", modules=False)
    code, err = cli_plan(tmp_path, VM + f'vm = {{ kernel = "{bare}" }}\n', capsys)
    assert code == 2 and "bots.a.vm.kernel" in err and "/lib/modules/6.1.0-99-nowhere" in err, err
    code, err = cli_plan(tmp_path, VM + f'vm = {{ kernel = "{tmp_path}/vmlinuz-6.1.0-x" }}\n', capsys)
    assert code == 2 and "bots.a.vm.kernel" in err and "is not a file" in err, err
    code, err = cli_plan(tmp_path, VM + f'vm = {{ kernel = "{tmp_path / "good" / "boot"}" }}\n', capsys)
    assert code == 2 and "bots.a.vm.kernel" in err, err  # a folder named like a kernel is not one
    assert cli_plan(tmp_path, VM + f'vm = {{ kernel = "{good}" }}\n', capsys)[0] == 0


def test_an_image_root_must_be_a_folder_holding_usr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "root" / "usr").mkdir(parents=True)
    for rootfs, said in [
        ("image:empty", "has no usr/ folder"),
        ("image:file", "is not a folder"),
        ("image:missing", "is not a folder"),
        ("image:/", "refusing to mount /"),
        (f"image:{tmp_path}/..", "refusing to mount"),  # the spec's folder or above it
    ]:
        code, err = cli_plan(tmp_path, VM + f'vm = {{ rootfs = "{rootfs}" }}\n', capsys)
        assert code == 2 and "bots.a.vm.rootfs" in err and said in err and "hint:" in err, (rootfs, err)
    for rootfs in ("image:root", f"image:{tmp_path}/root"):  # relative to the spec's folder, or absolute
        assert cli_plan(tmp_path, VM + f'vm = {{ rootfs = "{rootfs}" }}\n', capsys)[0] == 0


@pytest.mark.parametrize(
    ("extra", "field", "hint", "good"),
    [  # good: a positive control that differs only in the refused value
        (
            'health = { cmd = ["true"] }\n',
            "health.cmd",
            "health = { http",
            'health = { tcp = "127.0.0.1:80" }\n',
        ),
        ("resources = { io_weight = 100 }\n", "resources.io_weight", "remove io_weight", "resources = {}\n"),
        ('vm = { memory = "96M" }\n', "vm.memory", "at least 128M", 'vm = { memory = "128M" }\n'),
    ],
)
def test_fields_the_vm_tier_cannot_honour_are_plan_time_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, field: str, hint: str, good: str
) -> None:
    code, err = cli_plan(tmp_path, VM + extra, capsys)
    assert code == 2 and f"(bots.a.{field})" in err and hint in err, err
    with pytest.raises(PolicyError) as caught:
        policy_of(tmp_path, VM + extra)
    assert caught.value.where == f"bots.a.{field}" and caught.value.exit_code == 2
    assert cli_plan(tmp_path, VM + good, capsys)[0] == 0
    if not extra.startswith("vm"):  # the sandbox tier takes the same field
        assert cli_plan(tmp_path, 'command = ["true"]\n' + extra, capsys)[0] == 0


def test_memory_above_half_the_hosts_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    half = mem_total() // 2 // MIB * MIB  # the largest whole MiB at most half the host's memory
    code, err = cli_plan(tmp_path, VM + f'vm = {{ memory = "{half // MIB + 1}M" }}\n', capsys)
    assert code == 2 and "(bots.a.vm.memory)" in err, err
    assert "the practice gives a VM at most half the host's memory" in err
    assert f"at most {half // MIB}M" in err
    code, err = cli_plan(tmp_path, VM + f'resources = {{ memory = "{half // MIB + 1}M" }}\n', capsys)
    assert code == 2 and "half the host's memory" in err, err  # from resources.memory too
    assert cli_plan(tmp_path, VM + f'vm = {{ memory = "{half // MIB}M" }}\n', capsys)[0] == 0
    # the planner takes the host's memory from its host facts
    policy = policy_of(tmp_path, VM + 'vm = { memory = "2G" }\n')
    small = HostFacts(cpu_count=4, system_dirs=(("/usr", None),), etc_entries=(), memory=3 * GIB)
    with pytest.raises(ClawpenError) as caught:
        build_plan(policy, IDENT, small, SECCOMP)
    assert caught.value.where == "bots.a.vm.memory" and "1.5G of 3.0G" in caught.value.what
    assert build_plan(policy, IDENT, small._replace(memory=4 * GIB), SECCOMP).vm == policy.vm
    assert HostFacts.probe().memory == mem_total()


def test_more_vcpus_than_the_host_has_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    count = os.cpu_count() or 1
    code, err = cli_plan(tmp_path, VM + f"vm = {{ cpus = {count + 1} }}\n", capsys)
    assert code == 2 and "(bots.a.vm.cpus)" in err and f"this host has ({count})" in err, err
    assert cli_plan(tmp_path, VM + f"vm = {{ cpus = {count} }}\n", capsys)[0] == 0


def test_a_kernel_among_clawpens_own_files_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """QEMU reads the kernel as the bot's uid, and a guest root could read it back from memory:
    a "kernel" in clawpen's state folder (its vault, its key) must never be handed to it."""
    state = tmp_path / "state"
    kernel = kernel_tree(state / "vault")
    monkeypatch.setenv("CLAWPEN_HOME", str(state))
    (tmp_path / "spec").mkdir()
    code, err = cli_plan(tmp_path / "spec", VM + f'vm = {{ kernel = "{kernel}" }}\n', capsys)
    assert code == 2 and "(bots.a.vm.kernel)" in err, err
    # the positive control: the same tree outside the state folder is accepted
    ok = kernel_tree(tmp_path / "elsewhere")
    assert policy_of(tmp_path / "spec", VM + f'vm = {{ kernel = "{ok}" }}\n').vm is not None
