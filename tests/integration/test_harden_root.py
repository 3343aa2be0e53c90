"""``clawpen host harden`` on a copy of the prepared Debian root (tests/integration/hostroot.py)
with weak settings: the plan shows the changes, apply makes them (sshd -t passes inside the root,
the operator is locked and may only run `clawpen restart` with sudo), Lynis's hardening index
goes up, a second plan is empty, and rollback restores all of /etc byte for byte and removes
the user. This machine's own /etc is never touched (checked)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from tests.integration.hostroot import run_in_root, weak_root

from clawpen.cli import main

# the first test of a machine builds the prepared root (debootstrap: a minute or several)
pytestmark = [pytest.mark.root, pytest.mark.hostroot, pytest.mark.slow, pytest.mark.timeout(900)]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICSN5Yu/QgXZnSUl1QllJpXze3Jw1yislyjyjloBxmYw op@test"
HOST_FILES = ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/ssh", "/etc/sudoers.d", "/etc/apt/apt.conf.d")


def etc_state(root: Path, tops: tuple[str, ...] = ("/etc",)) -> dict[str, tuple[str, int, int, int]]:
    """Every entry under ``tops`` in ``root``: content hash (or link target), mode and owner."""
    out: dict[str, tuple[str, int, int, int]] = {}
    for top in tops:
        base = root / top.lstrip("/")
        if not base.exists():
            out[top] = ("absent", 0, 0, 0)
            continue
        paths = [base, *base.rglob("*")] if base.is_dir() else [base]
        for path in paths:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            out[str(path.relative_to(root))] = (what, st.st_mode, st.st_uid, st.st_gid)
    return out


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_harden_a_prepared_debian_root(
    tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host_before = etc_state(Path("/"), HOST_FILES)
    root = weak_root(tmp_path / "root")
    spec = tmp_path / "clawpen.toml"
    spec.write_text(f'[host.harden]\noperator_keys = ["{KEY}"]\n[snapshots]\nstate_every = "24h"\n')
    before = etc_state(root)

    code, out = cli(capsys, "host", "harden", "plan", "--root", str(root), "-f", str(spec), "--json")
    assert code == 0, out
    plan = json.loads(out)
    assert [s["id"] for s in plan["steps"] if s["status"] == "change"] == [
        "operator-user",
        "operator-keys",
        "sudoers",
        "operator-token",
        "sshd",
        "auto-updates",
    ]
    assert etc_state(root) == before  # plan changes nothing

    code, out = cli(capsys, "host", "harden", "apply", "--root", str(root), "-f", str(spec))
    assert code == 0, out
    assert "applied 6 step(s)" in out
    # sshd accepts the configuration and uses the drop-in's values
    assert run_in_root(root, ["sshd", "-t", "-f", "/etc/ssh/sshd_config"]).returncode == 0
    effective = run_in_root(root, ["sshd", "-T", "-f", "/etc/ssh/sshd_config"]).stdout.splitlines()
    for line in ("passwordauthentication no", "permitrootlogin no", "maxauthtries 4", "x11forwarding no"):
        assert line in effective
    # the operator: exists, password locked, its key installed, only `clawpen restart` with sudo
    shadow = [r.split(":") for r in (root / "etc/shadow").read_text().splitlines()]
    assert next(r[1] for r in shadow if r[0] == "clawpen-op").startswith("!")
    assert (root / "home/clawpen-op/.ssh/authorized_keys").read_text() == f"{KEY}\n"
    assert (root / "home/clawpen-op/.config/clawpen/token").read_text().startswith("cpt_")
    assert json.loads((root / "var/lib/clawpen/tokens.json").read_text()).popitem()[1]["role"] == "operator"
    visudo = run_in_root(root, ["visudo", "-c"])
    assert visudo.returncode == 0 and "clawpen-operator: parsed OK" in visudo.stdout
    sudo = run_in_root(root, ["sudo", "-l", "-U", "clawpen-op"])
    allowed = [
        line.strip() for line in sudo.stdout.split("may run the following commands", 1)[1].splitlines()[1:]
    ]
    assert [line for line in allowed if line] == ["(root) NOPASSWD: /usr/local/bin/clawpen restart *"]
    # Lynis's hardening index before and after: tests/integration/test_audit_hostroot.py

    code, out = cli(capsys, "host", "harden", "plan", "--root", str(root), "-f", str(spec), "--json")
    assert code == 0 and json.loads(out)["changes"] == 0, out  # idempotent

    code, out = cli(capsys, "host", "harden", "rollback", "--root", str(root))
    assert code == 0 and "user(s) removed: clawpen-op" in out, out
    assert etc_state(root) == before  # all of /etc byte for byte, modes and owners too
    assert not (root / "home/clawpen-op").exists()
    assert "clawpen-op" not in (root / "etc/passwd").read_text()
    code, out = cli(capsys, "host", "harden", "rollback", "--root", str(root))
    assert code == 0 and "already rolled back" in out
    assert etc_state(root) == before
    assert etc_state(Path("/"), HOST_FILES) == host_before  # this machine's own files: untouched


def test_a_failed_step_undoes_the_user_and_files_it_made(
    tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An earlier sshd drop-in (a cloud image's) keeps password login on: sshd -T shows that the
    drop-in's values are not used, so the sshd step fails and every step before it is undone."""
    root = weak_root(tmp_path / "root")
    (root / "etc/ssh/sshd_config.d/05-cloud.conf").write_text("PasswordAuthentication yes\n")
    spec = tmp_path / "clawpen.toml"
    spec.write_text(f'[host.harden]\noperator_keys = ["{KEY}"]\n')
    before = etc_state(root)
    code, out = cli(capsys, "host", "harden", "plan", "--root", str(root), "-f", str(spec))
    assert code == 0 and "05-cloud.conf come(s) first" in out, out
    code, out = cli(capsys, "host", "harden", "apply", "--root", str(root), "-f", str(spec))
    assert code == 2, out
    assert "step sshd failed: sshd does not use the drop-in's values: passwordauthentication is yes" in out
    assert "operator-user, operator-keys, sudoers, operator-token" in out
    assert etc_state(root) == before
    assert not (root / "home/clawpen-op").exists()
    assert not (root / "var/lib/clawpen").exists()  # the token store it created: gone with its folder
