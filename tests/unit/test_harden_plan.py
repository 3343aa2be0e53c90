"""The harden plan on small root folders: the steps and their exact diffs, what is skipped and
why, and idempotence (a root that already follows [host.harden] gets an empty plan)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harden_roots import DEBIAN_SSHD, KEY, OTHER_KEY, add_operator, make_root, plan_of
from tests.conftest import group_of

from clawpen.harden.content import (
    AUTO_UPGRADES,
    SSHD_DROPIN,
    SUDOERS,
    UU_ORIGINS,
    authorized_keys,
    auto_upgrades_text,
    include_first,
    origins_text,
    sshd_dropin,
    sudoers_text,
)
from clawpen.harden.plan import Plan
from clawpen.spec.host import Harden
from clawpen.tokens import TokenStore

CFG = Harden(operator_keys=[KEY])


def ids(plan: Plan) -> list[str]:
    return [s.id for s in plan.changes]


def step(plan: Plan, step_id: str):  # type: ignore[no-untyped-def]
    return next(s for s in plan.steps if s.id == step_id)


def test_a_weak_root_gets_every_step_in_order(tmp_path: Path) -> None:
    plan = plan_of(make_root(tmp_path), CFG)
    assert ids(plan) == [
        "operator-user",
        "operator-keys",
        "sudoers",
        "operator-token",
        "sshd",
        "auto-updates",
    ]
    user = step(plan, "operator-user")
    root = str(tmp_path / "root")
    assert user.commands == (
        ("useradd", "--root", root, "-m", "-s", "/bin/bash", "-U", "clawpen-op"),
        ("usermod", "--root", root, "-L", "clawpen-op"),
    )
    assert user.creates_user == "clawpen-op"
    assert "/etc/shadow" in user.saves and "/etc/passwd-" in user.saves
    keys = step(plan, "operator-keys").files[0]
    assert (keys.path, keys.mode, keys.owner, keys.parent_mode) == (
        "/home/clawpen-op/.ssh/authorized_keys",
        0o600,
        "clawpen-op",
        0o700,
    )
    assert keys.new == f"{KEY}\n".encode()
    sudo = step(plan, "sudoers").files[0]
    assert (sudo.path, sudo.mode, sudo.validate) == (SUDOERS, 0o440, ("visudo", "-c", "-f", "{file}"))
    assert sudo.new is not None
    assert (
        sudo.new.decode().splitlines()[-1]
        == "clawpen-op ALL=(root) NOPASSWD: /usr/local/bin/clawpen restart *"
    )
    other = plan_of(tmp_path / "root", CFG, firewall="another root").describe()
    assert "[skipped] firewall: the host firewall\n  note: skipped: another root" in other


def test_the_sshd_diff_is_exact_and_checked_by_sshd(tmp_path: Path) -> None:
    sshd = step(plan_of(make_root(tmp_path), CFG), "sshd")
    assert [f.path for f in sshd.files] == [SSHD_DROPIN]  # Debian's file includes the drop-ins first
    assert sshd.files[0].diff.splitlines()[:3] == [
        "--- /dev/null",
        f"+++ b{SSHD_DROPIN}",
        "@@ -0,0 +1,8 @@",
    ]
    body = [
        line
        for line in sshd.files[0].diff.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    assert body[2:] == [
        "+PasswordAuthentication no",
        "+KbdInteractiveAuthentication no",
        "+PermitRootLogin no",
        "+PermitEmptyPasswords no",
        "+X11Forwarding no",
        "+MaxAuthTries 4",
    ]
    assert sshd.checks == (("sshd", "-t", "-f", "/etc/ssh/sshd_config"),)
    assert dict(sshd.expect)["passwordauthentication"] == "no"


def test_the_include_is_added_on_top_when_missing_or_late(tmp_path: Path) -> None:
    late = "PasswordAuthentication yes\nInclude /etc/ssh/sshd_config.d/*.conf\n"
    for n, text in enumerate(["PasswordAuthentication yes\n", late]):
        sshd = step(plan_of(make_root(tmp_path / str(n), sshd=text), CFG), "sshd")
        main = sshd.files[0]
        assert main.path == "/etc/ssh/sshd_config"
        assert main.new is not None and main.new.endswith(text.encode())
        assert "+Include /etc/ssh/sshd_config.d/*.conf" in main.diff.splitlines()
    assert include_first(DEBIAN_SSHD)
    assert include_first("# c\nPort 22\ninclude sshd_config.d/*.conf\nPermitRootLogin yes\n")
    assert not include_first("Match User x\nInclude /etc/ssh/sshd_config.d/*.conf\n")
    assert not include_first("Include /etc/ssh/other/*.conf\nPermitRootLogin yes\n")


def test_an_earlier_dropin_that_sets_our_keys_is_named(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "etc/ssh/sshd_config.d/05-cloud.conf").write_text("PasswordAuthentication yes\n")
    (root / "etc/ssh/sshd_config.d/90-late.conf").write_text("PasswordAuthentication yes\n")
    notes = " ".join(step(plan_of(root, CFG), "sshd").notes)
    assert "05-cloud.conf" in notes and "90-late.conf" not in notes


def test_auto_updates_policies(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    off = step(plan_of(root, CFG), "auto-updates")
    assert [f.path for f in off.files] == [AUTO_UPGRADES]  # no origins file to remove
    lines = off.files[0].diff.splitlines()
    assert '-APT::Periodic::Unattended-Upgrade "1";' in lines
    assert '+APT::Periodic::Unattended-Upgrade "0";' in lines
    security = step(plan_of(root, Harden(auto_updates="security")), "auto-updates")
    assert [f.path for f in security.files] == [AUTO_UPGRADES, UU_ORIGINS]
    text = origins_text("security")
    assert text is not None and b"#clear Unattended-Upgrade::Origins-Pattern;" in text
    assert b'label=Debian"' not in text and b"label=Debian-Security" in text
    all_text = origins_text("all")
    assert all_text is not None and b'label=Debian"' in all_text
    # back to "off": the origins file written for "security" is removed
    (root / UU_ORIGINS.lstrip("/")).write_bytes(text)
    again = step(plan_of(root, CFG), "auto-updates")
    removal = next(f for f in again.files if f.path == UU_ORIGINS)
    assert removal.new is None and removal.diff.splitlines()[1] == "+++ /dev/null"


def test_authorized_keys_keeps_other_keys_and_adds_the_missing_ones() -> None:
    assert authorized_keys(None, [KEY]) == f"{KEY}\n".encode()
    assert authorized_keys(f"{OTHER_KEY}".encode(), [KEY]) == f"{OTHER_KEY}\n{KEY}\n".encode()
    # the same key with another comment is present already
    assert authorized_keys(f"{KEY.rsplit(' ', 1)[0]} renamed\n".encode(), [KEY]) is None


def _follow(root: Path, cfg: Harden) -> None:
    """Write what ``cfg`` wants into ``root`` by hand (what apply does)."""
    add_operator(root)
    ssh = root / "home/clawpen-op/.ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text(f"{KEY}\n")
    os.chmod(ssh / "authorized_keys", 0o600)
    os.chown(ssh / "authorized_keys", 1000, 1000)
    (root / SUDOERS.lstrip("/")).write_bytes(sudoers_text("clawpen-op", "/usr/local/bin/clawpen"))
    os.chmod(root / SUDOERS.lstrip("/"), 0o440)
    (root / SSHD_DROPIN.lstrip("/")).write_bytes(sshd_dropin(cfg))
    (root / AUTO_UPGRADES.lstrip("/")).write_bytes(auto_upgrades_text(cfg.auto_updates))
    TokenStore(root / "var/lib/clawpen").create("operator", name="host-harden:clawpen-op")


@pytest.mark.root  # chown of the operator's file
def test_a_root_that_follows_the_config_gets_an_empty_plan(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    _follow(root, CFG)
    plan = plan_of(root, CFG, snapshots=("[snapshots] clawpen's state every 1d",))
    assert plan.empty, plan.describe()
    assert plan.describe().splitlines()[0].endswith("no change")
    assert step(plan, "snapshots").status == "report"
    # a changed mode alone is a change again, shown in the diff
    os.chmod(root / SUDOERS.lstrip("/"), 0o644)
    sudo = step(plan_of(root, CFG), "sudoers").files[0]
    assert sudo.diff.endswith("mode 0644 -> 0440\n") and sudo.old == sudo.new


def test_an_unlocked_operator_is_only_locked(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    add_operator(root, locked=False)
    user = step(plan_of(root, CFG), "operator-user")
    assert user.commands == (("usermod", "--root", str(root), "-L", "clawpen-op"),)
    assert user.creates_user is None  # rollback never removes a user it did not create


def test_missing_programs_skip_their_steps_with_the_reason(tmp_path: Path) -> None:
    plan = plan_of(make_root(tmp_path, tools=()), Harden())
    assert step(plan, "sudoers").status == "skipped"
    assert "apt-get install sudo" in step(plan, "sudoers").notes[0]
    assert step(plan, "sshd").status == "skipped"
    assert step(plan, "operator-keys").status == "skipped"  # no keys given: said, not hidden
    assert "operator-token" not in ids(plan)


def test_firewall_and_snapshot_steps(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    live = plan_of(root, CFG, firewall="changed", firewall_diff="+ table", firewall_table="table inet x {}")
    assert step(live, "firewall").firewall_table == "table inet x {}"
    assert "firewall" not in ids(plan_of(root, CFG, firewall="unchanged"))
    assert step(plan_of(root, CFG), "firewall").status == "skipped"
    assert "firewall" not in [s.id for s in plan_of(root, Harden(firewall=False)).steps]
    none = step(plan_of(root, CFG, snapshots=()), "snapshots")
    assert none.status == "report" and "no snapshot schedule" in none.notes[0]


def test_plan_json_lists_files_and_commands(tmp_path: Path) -> None:
    data = plan_of(make_root(tmp_path), CFG).to_json()
    assert data["changes"] == 6
    sudo = next(s for s in data["steps"] if s["id"] == "sudoers")
    assert sudo["files"][0] | {"diff": ""} == {
        "path": SUDOERS,
        "action": "write",
        "mode": "0440",
        "owner": "root:root",
        "diff": "",
    }


def test_hostroot_tests_run_in_the_vm_group() -> None:
    class Item:
        path = Path(__file__).parents[1] / "integration/test_harden_root.py"
        name = originalname = "t"

        def get_closest_marker(self, name: str) -> object | None:
            return name if name in ("hostroot", "root") else None

    assert group_of(Item()) == "vm"  # type: ignore[arg-type]
