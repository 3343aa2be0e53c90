"""``validate --hostile`` in the vm tier: the verdict of kernel-attack actions (``vm-boundary``),
the probes that name the kernel they ran on, the new kernel-interface probes, and ``--exec``
refused for a vm bot. The actions run for real in a guest in
tests/integration/test_hostile_vm.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clawpen.cli import main
from clawpen.validate import probes as PROBES
from clawpen.validate.actions import ACTIONS, KERNEL_ATTACKS
from clawpen.validate.hostile import Outcome, all_contained, host_boot_id, judge, run_notes
from clawpen.validate.probes import last_json

BY_ID = {a.id: a for a in ACTIONS}
HOST = host_boot_id()
GUEST = "0f0e0d0c-1111-2222-3333-444455556666"
DID = {"did": True, "detail": "ok"}


def test_the_kernel_attacks_are_actions_of_the_catalogue() -> None:
    assert set(BY_ID) >= KERNEL_ATTACKS
    assert {
        "priv.module",
        "priv.bpf",
        "priv.perf",
        "priv.keyctl",
        "priv.userns",
        "proc.ptrace",
    } <= KERNEL_ATTACKS
    assert {"priv.io-uring", "priv.userfaultfd"} <= KERNEL_ATTACKS
    assert BY_ID["priv.keyctl"].kernel and not BY_ID["fs.read-shadow"].kernel


def test_a_kernel_attack_on_the_guests_kernel_is_contained_by_the_vm_boundary() -> None:
    keyctl, shadow = BY_ID["priv.keyctl"], BY_ID["fs.read-shadow"]
    on_guest = {"did": True, "detail": "keyctl ok", "boot": GUEST}
    refused_on_guest = {"did": False, "detail": "EPERM", "boot": GUEST}
    assert judge(keyctl, on_guest, "exited", None, DID, host_boot=HOST) == "vm-boundary"
    assert judge(keyctl, refused_on_guest, "exited", None, None, host_boot=HOST) == "vm-boundary"
    # the same answer from the host's own kernel is an escape, and a trace on the host always is
    on_host = {**on_guest, "boot": HOST}
    assert judge(keyctl, on_host, "exited", None, DID, host_boot=HOST) == "escaped"
    assert judge(keyctl, on_guest, "exited", "/usr/x exists on the host", DID, host_boot=HOST) == "escaped"
    # no kernel named (an answer without the boot id, or an unknown one): judged as in other tiers
    assert judge(keyctl, DID, "exited", None, DID, host_boot=HOST) == "escaped"
    assert judge(keyctl, {**on_guest, "boot": "unknown"}, "exited", None, DID, host_boot=HOST) == "escaped"
    unjudged = {"did": False, "detail": "no python3", "judged": False, "boot": GUEST}
    assert judge(keyctl, unjudged, "exited", None, DID, host_boot=HOST) == "not-judged"
    # not a kernel attack: a guest that reads a host file is an escape, a refusal is "contained"
    assert judge(
        shadow, {"did": True, "detail": "read", "boot": GUEST}, "exited", None, DID, host_boot=HOST
    ) == ("escaped")
    assert judge(
        shadow, {"did": False, "detail": "ENOENT", "boot": GUEST}, "exited", None, DID, host_boot=HOST
    ) == ("contained")
    # outside the vm tier (no host_boot) nothing changes
    assert judge(keyctl, on_guest, "exited", None, DID) == "escaped"


def test_vm_boundary_counts_as_contained_and_the_notes_name_the_actions() -> None:
    boundary = Outcome(
        "priv.keyctl", "privilege", "t", "vm-boundary", "ok (the guest's own kernel allowed it)", "c"
    )
    refused = Outcome(
        "priv.module", "privilege", "t", "vm-boundary", "EPERM (the guest's own kernel refused it)", "c"
    )
    contained = Outcome("fs.read-shadow", "filesystem", "t", "contained", "ENOENT", "c")
    escaped = contained._replace(verdict="escaped")
    assert all_contained([boundary, refused, contained])
    assert not all_contained([boundary, escaped])
    from clawpen.spec.policy import BotPolicy
    from clawpen.spec.vm import VmSettings

    notes = " | ".join(
        run_notes(BotPolicy(name="v", command=("true",), vm=VmSettings()), [boundary, refused])
    )
    assert "vm tier" in notes and "contained by the VM boundary (2 kernel-attack actions" in notes
    assert "allowed priv.keyctl" in notes and "allowed priv.keyctl, priv.module" not in notes
    assert "VM boundary" not in " ".join(run_notes(BotPolicy(name="s", command=("true",)), [contained]))


def _probe(code: str, *args: str, prelude: str = PROBES.PRELUDE) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-I", "-c", prelude + code, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = last_json(done.stdout)
    assert found is not None, done.stdout
    return found


def test_the_vm_probes_name_the_kernel_they_ran_on(tmp_path: Path) -> None:
    got = _probe("out(False, 'x')", str(tmp_path), prelude=PROBES.PRELUDE + PROBES.KERNEL_ID)
    assert got == {"did": False, "detail": "x", "boot": HOST}
    assert "boot" not in _probe("out(False, 'x')", str(tmp_path))  # other tiers: unchanged answers


def test_the_new_kernel_interface_probes_work_on_this_kernel(tmp_path: Path) -> None:
    # the positive control of the probes themselves: this process is not confined
    io_uring = _probe(PROBES.IO_URING, str(tmp_path))
    uffd = _probe(PROBES.USERFAULTFD, str(tmp_path))
    if (
        os.path.exists("/proc/sys/kernel/io_uring_disabled")
        and Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "2"
    ):
        assert io_uring["did"] is False
    else:
        assert io_uring == {"did": True, "detail": "io_uring_setup ok"}
    assert uffd == {"did": True, "detail": "userfaultfd ok"}
    # clawpen-sysprobe (for images whose python3 has no ctypes) answers them the same way
    from clawpen.validate.sysprobe import build

    built = build(tmp_path / "cache")
    for action, python in (("io_uring", io_uring), ("userfaultfd", uffd)):
        done = subprocess.run([built, action], capture_output=True, text=True, timeout=30, check=False)
        assert last_json(done.stdout) == {**python, "via": "clawpen-sysprobe"}, done


def test_exec_is_refused_for_a_vm_bot_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "clawpen.toml"
    spec.write_text(
        '[bots.plain]\ncommand = ["true"]\n'
        '[bots.guest]\ntier = "vm"\nvm = { kernel = "auto" }\ncommand = ["true"]\n'
    )
    code = main(["validate", "--hostile", "--exec", "-f", str(spec)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--exec cannot enter vm bot 'guest'" in err and "drop --exec" in err
