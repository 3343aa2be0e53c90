"""A bot stored by an older clawpen whose policy this one refuses (a new rule or bound) never
keeps the daemon from starting: the other bots are adopted, the refused bot's sandbox is
stopped (it may hold what the new rule protects), it shows as stopped, and an event says why."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

import pytest
from helpers import DaemonCli, alive, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]

SPEC = """
    [bots.sp-good]
    command = ["sleep", "300"]

    [bots.sp-bad]
    command = ["sleep", "300"]
"""


def test_a_stored_policy_refused_by_new_rules_is_stopped_and_the_rest_adopted(daemon: DaemonCli) -> None:
    daemon.write(SPEC)
    daemon.cli("up")
    good = daemon.wait_state("sp-good", "running")["pid"]
    bad = daemon.wait_state("sp-bad", "running")["pid"]
    old = daemon.pid()
    assert old
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: not alive(old), 5)
    # What an older clawpen accepted and stored: a workspace that is clawpen's own state folder.
    db = sqlite3.connect(daemon.home / "clawpen.db")
    (raw,) = db.execute("SELECT policy FROM bots WHERE name = 'sp-bad'").fetchone()
    policy = json.loads(raw)
    policy["spec"]["workspace"] = str(daemon.home)
    db.execute("UPDATE bots SET policy = ? WHERE name = 'sp-bad'", (json.dumps(policy),))
    db.commit()
    db.close()

    rows = daemon.ps()  # a new daemon starts on this state
    assert rows["sp-good"]["state"] == "running" and rows["sp-good"]["pid"] == good and alive(good)
    assert rows["sp-bad"]["state"] == "stopped"
    assert wait_for(lambda: not alive(bad), 5), "the refused bot's sandbox still runs"
    (why,) = [e["reason"] for e in daemon.events("sp-bad") if e["kind"] == "policy-refused"]
    assert "stored policy of bot sp-bad is refused" in why and "workspace" in why, why
    # starting it by hand is refused with the same reason, not a traceback
    start = daemon.cli("start", "sp-bad", check=False)
    assert start.returncode == 2 and "refused by this clawpen" in start.stderr
    assert "Traceback" not in start.stderr
    # a fixed spec brings it back
    daemon.cli("up")
    assert daemon.wait_state("sp-bad", "running")["pid"] != bad
