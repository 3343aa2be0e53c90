"""`clawpen release show`, `clawpen diff` and `clawpen rollback` against a real daemon (issue 15,
items 1 and 2): a bot's command changed by `up` comes back with `rollback` (the running process's
argv proves it), recorded as a new release that says where it came from; an unknown release and
a dry run change nothing."""

from __future__ import annotations

import json
import os
import random

import pytest
from helpers import DaemonCli, alive, wait_for, with_marker

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SPEC = """
    [bots.rb1]
    command = ["sleep", "{secs}"]
"""


def sleeping(secs: int) -> list[int]:
    """Pids of host processes whose argv is exactly ``sleep SECS``."""
    return [p.pid for p in with_marker(str(secs), comm="sleep") if p.argv == ["sleep", str(secs)]]


def test_rollback_brings_the_old_command_back_as_a_new_release(daemon: DaemonCli) -> None:
    old, new = (random.randrange(400_000, 900_000) * 10 + n for n in (1, 2))  # argv nobody else runs
    daemon.write(SPEC.format(secs=old))
    daemon.cli("up")
    daemon.write(SPEC.format(secs=new))
    daemon.cli("up")
    assert wait_for(lambda: sleeping(new) and not sleeping(old), 10)
    bwrap = daemon.ps()["rb1"]["pid"]

    # diff: the changed field, and the spec text's lines
    diff = daemon.json("diff", "1", "2")
    assert diff["bots"] == [
        {"bot": "rb1", "change": "changed", "fields": ["command"], "why": "changed: command"}
    ]
    assert f'-command = ["sleep", "{old}"]' in diff["spec_diff"].splitlines()
    text = daemon.cli("diff", "1").stdout  # B: the latest
    assert "changed  rb1: command" in text and f'+command = ["sleep", "{new}"]' in text
    shown = daemon.json("release", "show", "2")
    assert shown["spec_text"].strip().endswith(f'command = ["sleep", "{new}"]')
    assert [(b["bot"], b["running"]) for b in shown["bots"]] == [("rb1", True)]

    # refused and dry runs change nothing
    unknown = daemon.cli("rollback", "99", check=False)
    assert unknown.returncode == 2 and "there is no release 99 (releases 1 to 2)" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad = daemon.cli("release", "show", "0", check=False)
    assert bad.returncode == 2 and "not a release number" in bad.stderr
    dry = daemon.json("rollback", "--dry-run")
    assert dry["dry_run"] is True and dry["recreate"] == ["rb1"] and dry["rollback_of"] == 1
    assert "changed: command" in dry["changes"][0]["why"]
    assert len(daemon.json("releases")) == 2
    assert daemon.ps()["rb1"]["pid"] == bwrap and alive(bwrap) and sleeping(new) and not sleeping(old)

    # the rollback itself: the spec file is gone (the stored text is applied), its folder is not
    daemon.spec.unlink()
    done = daemon.cli("rollback")
    assert "release 3: rollback of release 1" in done.stdout and "restart (changed) rb1" in done.stdout
    assert wait_for(lambda: sleeping(old) and not sleeping(new), 10), (sleeping(old), sleeping(new))
    assert not alive(bwrap)
    latest = daemon.json("releases")[0]
    assert latest["id"] == 3 and latest["rollback_of"] == 1
    assert latest["summary"] == "rollback of release 1: recreate rb1"
    assert latest["spec_path"] == str(daemon.spec)
    assert daemon.json("release", "show", "3")["rollback_of"] == 1
    audit = [json.loads(line) for line in (daemon.home / "audit.log").read_text().splitlines()]
    rollbacks = [r for r in audit if r["action"] == "rollback"]
    assert [(r["detail"].get("dry_run"), r["detail"]["rollback_of"]) for r in rollbacks] == [
        (True, 1),
        (False, 1),
    ]  # the refused one (release 99) changed nothing and is not there
    assert rollbacks[1]["detail"]["release"] == 3
    back = daemon.json("diff", "1", "3")
    assert [b["change"] for b in back["bots"]] == ["unchanged"] and back["spec_diff"] == ""
    # positive control for the refusal: the same command with a known release works (to 2 again)
    daemon.cli("rollback", "2", "--json")
    assert wait_for(lambda: sleeping(new) and not sleeping(old), 10)
    assert os.path.exists(daemon.spec.parent)
