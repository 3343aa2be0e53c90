"""The VM tier's pure parts: the plan that runs QEMU, QEMU's argv, the guest's orders, the
initramfs, and how a (possibly hostile) guest's status lines are read."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from clawpen.plan.build import HostFacts, build_plan
from clawpen.plan.model import Identity
from clawpen.sandbox.seccomp import default_policy
from clawpen.spec.policy import BotPolicy
from clawpen.spec.vm import VmSettings
from clawpen.vm import initrd, layout
from clawpen.vm.tier import _parse_end

IDENT = Identity("b", 1_900_000_123, 1_900_000_123)


def plan_for(tmp_path: Path, **vm: object) -> object:
    policy = BotPolicy(
        name="b",
        command=("python3", "bot.py"),
        workspace=str(tmp_path / "ws"),
        secrets=("TOKEN",),
        secret_env=("TOKEN",),
        rw=((str(tmp_path / "data"), "/data"),),
        vm=VmSettings(memory=256 << 20, ports=(8000, 9000), **vm),  # type: ignore[arg-type]
    )
    return build_plan(policy, IDENT, HostFacts.probe(), default_policy())


def test_qemu_runs_in_the_bots_sandbox_with_the_guest_tree_apart(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    vm = layout.layout(
        plan, kernel="/k/vmlinuz-6", ctl="/run/clawpen-vm/x", modules=["virtio"], accel="tcg",
        secret_env={"TOKEN": "s3cret"}, stdio=(7, 8), tsc_khz=2_000_000,
    )  # fmt: skip
    q = vm.plan
    assert q.identity == plan.identity and q.seccomp == plan.seccomp and q.namespaces == plan.namespaces
    assert q.secret_env == () and all("s3cret" not in a for a in q.command)  # never on QEMU's argv or env
    assert q.cgroup.memory_max == (256 << 20) + layout.OVERHEAD
    dests = {m.dest: m for m in q.mounts}
    # the bot's data is only in the guest tree (shared), never in QEMU's own view
    assert dests["/vm/root/workspace"].kind == "rw" and "/workspace" not in dests and "/data" not in dests
    assert dests["/vm/root/run/secrets/TOKEN"].kind == "secret"
    # QEMU's /proc and /dev are its own, never in the shared tree
    assert dests["/proc"].kind == "proc" and dests["/vm/root/proc"].kind == "dir"
    assert dests["/vm/root/dev"].kind == "dir" and dests["/vm/initrd"].kind == "secret"
    assert q.mounts[-1].kind == "remount-ro" and q.mounts[-1].dest == "/"
    argv = " ".join(q.command)
    assert "path=/vm/root,security_model=none,multidevs=remap,readonly=on" in argv
    assert "path=/vm/root/workspace,security_model=none" in argv and "path=/vm/root/data," in argv
    assert "hostfwd=tcp::8000-:61000,hostfwd=tcp::9000-:61001" in argv
    assert "-sandbox on,obsolete=deny" in argv and "tsc_early_khz=2000000" in argv
    assert "fd=7,set=1" in argv and "fd=8,set=2" in argv
    orders = list(vm.orders)
    assert ("share", "rw0", "/workspace") in orders and ("share", "rw1", "/data") in orders
    assert ("env", "TOKEN=s3cret") in orders and ("uid", str(IDENT.uid)) in orders
    assert ("fwd", "8000", "61000") in orders and ("arg", "bot.py") in orders
    assert (
        "tmpfs",
        "/tmp",
        str(plan.mounts[[m.dest for m in plan.mounts].index("/tmp")].size),
        "1777",
    ) in orders


def test_an_image_root_replaces_the_hosts_system_in_the_guest_only(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, rootfs="image:/srv/img")
    vm = layout.layout(
        plan, kernel="/k/vmlinuz-6", ctl="/c", modules=[], accel="kvm", secret_env={}, stdio=(3, 4),
        image_has=frozenset({"/usr"}),
    )  # fmt: skip
    binds = {m.dest: m.source for m in vm.plan.mounts if m.kind == "ro"}
    assert binds["/vm/root/usr"] == "/srv/img/usr" and binds["/usr"] == "/usr"  # QEMU keeps the host's
    assert not any(d.startswith("/vm/root/etc/") and s and s.startswith("/etc") for d, s in binds.items())
    assert "-accel kvm" in " ".join(vm.plan.command) and "tsc_early_khz" not in " ".join(vm.plan.command)


def test_the_guests_orders_and_the_initramfs_are_well_formed(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.ko").write_bytes(b"\0name=a\0depends=b\0")
    (tmp_path / "m" / "b.ko").write_bytes(b"\0name=b\0depends=\0")
    assert initrd.module_names(tmp_path / "m") == [] and [
        n for n, _ in initrd.module_order(tmp_path / "m", ("a",))
    ] == ["b", "a"]
    init = tmp_path / "init"
    init.write_bytes(b"\x7fELF")
    base = initrd.base_archive(str(init), tmp_path / "m", tmp_path / "cache")
    image = initrd.instance_image(base, initrd.boot_orders([("arg", "x y"), ("env", "A=1")]))
    shared = base.read_bytes()
    padded = len(shared) + (-len(shared) % 4)  # the orders' archive starts on a 4-byte boundary
    assert image[: len(shared)] == shared and image[len(shared) : padded] == b"\0" * (padded - len(shared))
    assert image[padded : padded + 6] == b"070701"
    assert b"070701" in gzip.decompress(shared)[:6] and b"arg\0x y\0env\0A=1\0" in image


def test_a_hostile_guests_status_lines_are_read_safely() -> None:
    assert _parse_end("exit 3") == ("exit", 3, False)
    assert _parse_end("signal 9 oom") == ("signal", 9, True)
    for hostile in (
        "exit 99999999999999",
        "exit -1",
        "exit abc",
        "signal 200",
        "exit",
        "",
        "started 1.2",
        "\0" * 50,
    ):
        assert _parse_end(hostile) is None, hostile


def test_two_vms_starting_at_once_both_get_the_tsc_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon starts VMs in threads: the second must not see TCG before the rate is known (a
    TCG guest started without it calibrated its clock under a CPU quota and hung at boot)."""
    import threading
    import time

    from clawpen.vm import accel, tier

    def slow_tsc(tool: str) -> int:
        time.sleep(0.3)  # the measurement takes time; a second thread asks meanwhile
        return 2_596_000

    monkeypatch.setattr(accel, "probe", lambda *a, **k: accel.Accel("tcg", "no KVM here"))
    monkeypatch.setattr(accel, "tsc_khz", slow_tsc)
    monkeypatch.setattr(tier, "build_static", lambda *a, **k: "/bin/true")
    vm = tier.VmTier(tmp_path, None)  # type: ignore[arg-type]
    got: list[int | None] = []
    threads = [threading.Thread(target=lambda: got.append(vm.tsc_khz())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [2_596_000, 2_596_000]
    # kept for the next process (clawpen run): no new measurement, the same answer
    monkeypatch.setattr(accel, "tsc_khz", lambda tool: 0)
    assert tier.VmTier(tmp_path, None).tsc_khz() == 2_596_000  # type: ignore[arg-type]
