"""``host harden apply`` and ``rollback`` on small root folders: every change backed up before it
is made, a failed step undoes the steps done (exit 2), rollback restores bytes, mode and owner
and is idempotent, and both are in the audit log."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from harden_roots import KEY, WEAK_APT, add_operator, make_root, plan_of

from clawpen import audit
from clawpen.harden.apply import Context, HardenFailed, apply, rollback
from clawpen.harden.content import AUTO_UPGRADES, UU_ORIGINS
from clawpen.harden.plan import FileChange, Plan, Step
from clawpen.spec.host import Harden

pytestmark = pytest.mark.root  # chown, and apply refuses to run without root

CFG = Harden(operator_keys=[KEY], auto_updates="security")


def tree(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every path under ``root``: its content's hash (files), mode, uid and gid."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(root))] = (digest, st.st_mode, st.st_uid, st.st_gid)
    return out


def weak(tmp_path: Path) -> Path:
    root = make_root(tmp_path, tools=())  # no sshd or sudo: the operator's keys and apt's settings
    add_operator(root)
    apt = root / AUTO_UPGRADES.lstrip("/")
    os.chown(apt, 1234, 1234)
    os.chmod(apt, 0o640)
    return root


def test_apply_then_rollback_restores_every_file_byte_for_byte(tmp_path: Path) -> None:
    root, state = weak(tmp_path), tmp_path / "state"
    before = tree(root)
    ctx = Context(root, state, root / "var/lib/clawpen", "tester")
    plan = plan_of(root, CFG)
    assert [s.id for s in plan.changes] == ["operator-keys", "auto-updates"]
    result = apply(plan, ctx)
    assert result.steps == ("operator-keys", "auto-updates")
    keys = root / "home/clawpen-op/.ssh/authorized_keys"
    assert keys.read_text() == f"{KEY}\n"
    st = keys.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 1000, 1000)
    assert (keys.parent.stat().st_mode & 0o777, keys.parent.stat().st_uid) == (0o700, 1000)
    apt = root / AUTO_UPGRADES.lstrip("/")
    assert 'Unattended-Upgrade "1"' in apt.read_text() and "security" in apt.read_text()
    assert (apt.stat().st_mode & 0o777, apt.stat().st_uid) == (0o644, 0)
    assert (root / UU_ORIGINS.lstrip("/")).is_file()
    assert plan_of(root, CFG).empty  # idempotent: nothing left to do
    manifest = json.loads((Path(str(result.backup)) / "manifest.json").read_text())
    saved = {e["path"]: e for e in manifest["entries"]}
    assert saved[str(apt)]["existed"] and saved[str(apt)]["mode"] == 0o640 and saved[str(apt)]["uid"] == 1234
    assert not saved[str(keys)]["existed"]
    assert (Path(str(result.backup)) / saved[str(apt)]["blob"]).read_text() == WEAK_APT

    out = rollback(ctx)
    assert out["changed"] and len(out["files"]) == 3
    assert tree(root) == before  # bytes, mode and owner; the created .ssh folder is gone
    assert rollback(ctx) == {"id": result.id, "changed": False, "note": f"{result.id} is already rolled back"}
    assert tree(root) == before
    actions = [r["action"] for r in audit.read(state)]
    assert actions == ["host.harden.apply", "host.harden.rollback"]
    assert audit.verify(state) == []


def test_a_failed_step_undoes_the_steps_done_and_exits_2(tmp_path: Path) -> None:
    root, state = weak(tmp_path), tmp_path / "state"
    before = tree(root)
    ctx = Context(root, state, root / "var/lib/clawpen", "tester")
    good = plan_of(root, CFG).changes
    boom = Step("boom", "a step that fails", commands=(("false",),))
    with pytest.raises(HardenFailed) as err:
        apply(Plan(str(root), (*good, boom)), ctx)
    assert err.value.exit_code == 2
    assert "step boom failed: false exited with 1" in err.value.what
    assert "operator-keys, auto-updates" in err.value.what
    assert tree(root) == before
    record = audit.read(state)[-1]
    assert record["action"] == "host.harden.apply-failed" and record["detail"]["step"] == "boom"
    assert rollback(ctx)["changed"] is False  # the failed apply was undone already


def test_the_backup_is_on_disk_before_the_change(tmp_path: Path) -> None:
    root, state = weak(tmp_path), tmp_path / "state"
    target = root / "etc/clawpen-probe"
    target.write_text("old\n")
    # the step's command runs before its file is written: it finds the manifest naming the file
    # and the saved copy already on disk
    probe = (
        f'grep -q \'"path": "{target}"\' {state}/harden/*/manifest.json && '
        f"grep -qx old {state}/harden/*/files/0"
    )
    step = Step(
        "probe",
        "a file and a command",
        files=(FileChange("/etc/clawpen-probe", b"old\n", b"new\n"),),
        commands=(("sh", "-c", probe),),
    )
    apply(Plan(str(root), (step,)), Context(root, state, root / "var/lib/clawpen", "tester"))
    assert target.read_text() == "new\n"
    assert rollback(Context(root, state, root / "var/lib/clawpen", "tester"))["changed"]
    assert target.read_text() == "old\n"


def test_an_empty_plan_makes_no_backup(tmp_path: Path) -> None:
    root, state = weak(tmp_path), tmp_path / "state"
    result = apply(Plan(str(root), ()), Context(root, state, root / "var/lib/clawpen", "tester"))
    assert result.id is None and not (state / "harden").exists()
    assert rollback(Context(root, state, root / "var/lib/clawpen", "tester"))["changed"] is False


def test_cli_rollback_by_id_checks_the_root(
    tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clawpen.cli import main

    root = weak(tmp_path)
    before = tree(root)
    result = apply(plan_of(root, CFG), Context(root, state, root / "var/lib/clawpen", "tester"))
    assert result.id is not None
    other = tmp_path / "other"
    other.mkdir()
    assert main(["host", "harden", "rollback", "--id", result.id, "--root", str(other)]) == 2
    assert f"was made to {root}" in capsys.readouterr().err
    assert main(["host", "harden", "rollback", "--id", "../x"]) == 2
    assert main(["host", "harden", "rollback", "--id", result.id]) == 0
    assert capsys.readouterr().out.startswith(f"rolled back {result.id}: 3 file(s) restored")
    assert tree(root) == before
