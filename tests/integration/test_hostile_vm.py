"""`clawpen validate --hostile` on a `tier = "vm"` bot: each action runs for real in a throwaway
guest (QEMU under TCG here) as the bot's uid, its positive control on the host.

The same actions on the same policy in the sandbox tier are the comparison (the positive
control of the verdicts): the actions both tiers contain get the same verdict; the kernel-attack
actions reach the guest's own kernel in the vm tier, which refuses them as the sandbox tier does
(the guest's init loads the bot's seccomp filter) and whose answer names a boot id that is not the
host's: "vm-boundary". Negative: a vm bot without a disk cap lets the file-size action through,
and the validator says "escaped". And the guest's init reads a bot argument that equals one of
its order keys ("exec", "net") as an argument, never as an order.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CLAWPEN, run_hostile
from vm_env import guest_kernel

from clawpen.validate.hostile import host_boot_id
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.vm]
# one guest boot per action (10 to 30 s each under TCG): a sample (docs/validate.md has a whole run)
SAME = ["fs.write-usr", "proc.signal-host", "res.memory"]
KERNEL = ["priv.keyctl", "priv.io-uring", "priv.netns"]  # the probe of priv.netns takes the argument "net"
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
    # the kernel attacks: refused by the sandbox tier; in the vm tier they met the guest's own
    # kernel (another boot id), which refused them the same way (the bot's seccomp filter there)
    host = host_boot_id()[:8]
    for aid in KERNEL:
        assert plain[aid]["verdict"] == "contained" and " ok" not in plain[aid]["inside"], plain[aid]
        assert guest[aid]["verdict"] == "vm-boundary", guest[aid]
        refused = plain[aid]["inside"] + " (the guest's own kernel refused it, boot id "
        assert guest[aid]["inside"].startswith(refused), (guest[aid], plain[aid])
        assert f"boot id {host}" not in guest[aid]["inside"]
        # the positive control: the same action works on the host, for either bot
        assert " ok" in guest[aid]["control"] and " ok" in plain[aid]["control"], (guest[aid], plain[aid])
    notes = " ".join(report["bots"]["guest"]["notes"])
    assert (
        "vm tier" in notes and f"contained by the VM boundary ({len(KERNEL)} kernel-attack actions" in notes
    )
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


def test_a_bot_argument_that_is_an_order_key_stays_an_argument(tmp_path: Path, spec_dir: Path) -> None:
    """init.c once read any token "exec" as its order "exec 1" (the bot ran as root in the guest)
    and "net" as "net 1" (no network device: the guest did not boot)."""
    (spec_dir / "clawpen.toml").write_text(
        f'[bots.args]\n{_vm()}command = ["/bin/sh", "-c", "echo uid=$(id -u) args=$0,$1", "exec", "net"]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    env.update(CLAWPEN_HOME=str(tmp_path / "state"), CLAWPEN_UID_BASE=str(UID_BASE))
    done = subprocess.run(
        [CLAWPEN, "run", "-f", "clawpen.toml", "--timeout", "240", "args"],
        cwd=spec_dir, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("uid="))
    uid, args = line.split()
    assert args == "args=exec,net", line
    assert int(uid.removeprefix("uid=")) >= 1_900_000_000, line  # the bot's uid, not root


def test_a_guest_image_without_python_is_not_judged(tmp_path: Path, spec_dir: Path) -> None:
    """rootfs = "image:PATH" without python3: the probe cannot run in the guest; the action is
    not judged (never contained, exit 1), and its control still ran on the host."""
    (spec_dir / "img" / "usr").mkdir(parents=True)
    (spec_dir / "img").chmod(0o755)
    (spec_dir / "clawpen.toml").write_text(
        f'[bots.bare]\n{_vm()}command = ["true"]\n'.replace(
            'memory = "256M"', 'memory = "256M", rootfs = "image:./img"'
        )
    )
    proc = run_hostile(tmp_path / "state", spec_dir, UID_BASE, "--json", "--only", "priv.keyctl", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (action,) = json.loads(proc.stdout)["bots"]["bare"]["actions"]
    assert action["verdict"] == "not-judged" and "no python3 to run the probe" in action["inside"], action
    assert "keyctl(JOIN_SESSION_KEYRING) ok" in action["control"]
