"""`clawpen validate --hostile` on a `tier = "vm"` bot: each action runs for real in a throwaway
guest (QEMU under TCG here) as the bot's uid, its positive control on the host.

The same actions on the same policy in the sandbox tier are the comparison: the actions both
tiers contain get the same verdict; the kernel-attack actions the sandbox tier refuses (seccomp)
reach the guest's own kernel in the vm tier, which allows some of them (user namespaces, the
keyring, io_uring): "vm-boundary", with the guest's boot id, never the host's. Negative: a vm
bot without a disk cap lets the file-size action through, and the validator says "escaped".
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_hostile
from vm_env import guest_kernel

from clawpen.validate.hostile import host_boot_id
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.vm]
# one guest boot per action (about 10 s each under TCG): a sample of every group
SAME = [
    "fs.read-shadow",
    "fs.write-usr",
    "proc.signal-host",
    "res.memory",
    "net.host-loopback",
    "sec.other-bot-env",
]
KERNEL = ["priv.userns", "priv.keyctl", "priv.io-uring", "priv.module"]
GUEST_ALLOWS = {"priv.userns", "priv.keyctl", "priv.io-uring"}  # Debian's kernel, to an unprivileged uid
RESOURCES = 'resources = { pids = 48, nofile = 256, disk = "32M", tmp = "16M" }\n'


@pytest.fixture
def spec_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="clawpen-hv-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def _vm(memory: str = "256M") -> str:
    return f'tier = "vm"\nvm = {{ kernel = "{guest_kernel()}", memory = "{memory}" }}\n'


def _traces() -> set[str]:
    found = set()
    for folder in ("/usr", "/etc", "/", "/root", "/tmp"):
        found |= {f"{folder}/{n}" for n in os.listdir(folder) if "clawpen-hostile" in n}
    return found


def _only(ids: list[str]) -> list[str]:
    return [arg for i in ids for arg in ("--only", i)]


def test_a_vm_bot_gets_the_sandbox_verdicts_and_its_kernel_attacks_meet_the_guest(
    tmp_path: Path, spec_dir: Path
) -> None:
    (spec_dir / "clawpen.toml").write_text(
        f'[bots.guest]\n{_vm()}command = ["sleep", "1"]\nworkspace = "./ws"\n'
        f'secrets = ["API_KEY"]\n{RESOURCES}'
        f'[bots.plain]\ncommand = ["sleep", "1"]\nworkspace = "./ws"\nsecrets = ["API_KEY"]\n'
        'resources = { memory = "96M", pids = 48, nofile = 256, disk = "32M", tmp = "16M" }\n'
    )
    before = _traces()
    proc = run_hostile(tmp_path / "state", spec_dir, UID_BASE, "--json", *_only(SAME + KERNEL), timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    guest = {a["id"]: a for a in report["bots"]["guest"]["actions"]}
    plain = {a["id"]: a for a in report["bots"]["plain"]["actions"]}
    assert set(guest) == set(plain) == set(SAME + KERNEL)
    # the same verdict as the sandbox tier for what both contain, each with a working control
    for aid in SAME:
        assert guest[aid]["verdict"] == plain[aid]["verdict"] == "contained", (guest[aid], plain[aid])
    assert "EROFS" in guest["fs.write-usr"]["inside"] and "created" in guest["fs.write-usr"]["control"]
    # the guest's memory is its RAM: the guest kernel's OOM killer ended the probe
    assert "oom" in guest["res.memory"]["inside"] or "MemoryError" in guest["res.memory"]["inside"]
    assert "read the secret" not in guest["sec.other-bot-env"]["inside"]
    # the kernel attacks: refused by the sandbox tier, met by the guest's own kernel in the vm tier
    host = host_boot_id()[:8]
    for aid in KERNEL:
        assert plain[aid]["verdict"] == "contained" and "ok" not in plain[aid]["inside"], plain[aid]
        assert guest[aid]["verdict"] == "vm-boundary", guest[aid]
        assert "boot id" in guest[aid]["inside"] and f"boot id {host}" not in guest[aid]["inside"]
        allowed = "the guest's own kernel allowed it" in guest[aid]["inside"]
        assert allowed == (aid in GUEST_ALLOWS), guest[aid]
    # the positive controls of the kernel attacks worked on the host for both bots
    assert (
        "unshare(user) ok" in guest["priv.userns"]["control"]
        and "io_uring_setup ok" in plain["priv.io-uring"]["control"]
    )
    notes = " ".join(report["bots"]["guest"]["notes"])
    assert "vm tier" in notes and "contained by the VM boundary (4 kernel-attack actions" in notes
    assert report["bots"]["guest"]["counts"]["vm-boundary"] == len(KERNEL)
    assert "VM boundary" not in " ".join(report["bots"]["plain"]["notes"])
    assert _traces() <= before  # no probe file, marker or fixture left behind
    assert not (spec_dir / "ws").exists()  # a throwaway workspace was used


def test_a_vm_bot_without_a_disk_cap_is_reported_as_an_escape(tmp_path: Path, spec_dir: Path) -> None:
    (spec_dir / "clawpen.toml").write_text(
        f'[bots.loose]\n{_vm()}command = ["true"]\nresources = {{ pids = 32, disk = "unlimited" }}\n'
    )
    proc = run_hostile(
        tmp_path / "state", spec_dir, UID_BASE, "loose", "--only", "res.file-size", timeout=300
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("loose "))
    assert "ESCAPED" in line and "res.file-size" in line, proc.stdout
    assert "0 of 1 contained" in proc.stdout
