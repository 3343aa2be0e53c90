"""A CLI of an earlier clawpen talks to this daemon (a newer clawpen adopts running bots and
must keep answering the CLI that is installed next to it): the requests below are, byte for
byte, what the CLI sent before operations had typed contracts (commit a018313), and the
answers must hold every field that CLI reads. Also: a bad argument over the real socket is
exit 2 naming the field, and the daemon keeps serving."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from helpers import DaemonCli, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

DEMO = """
    [bots.demo]
    command = ["sh", "-c", "while true; do echo tick; sleep 0.2; done"]
"""
# the fields the earlier CLI's renderers read (cli_daemon.py cmd_ps, cmd_status, cmd_up, ...)
PS_ROW = {"bot", "replica", "state", "pid", "started_at", "restarts", "last_exit", "last_reason"}
STATUS = {"bot", "desired", "release", "instances", "events"}
EVENT = {"at", "kind", "to_state", "from_state", "reason", "bot", "replica"}


def exchange(
    d: DaemonCli, request: dict[str, Any], items: int = 0
) -> tuple[list[Any], dict[str, Any] | None]:
    """Send one request line as the earlier client did; ``items`` streamed items first (then hang
    up, as `events -f` does on Ctrl-C), else the final reply (heartbeats skipped)."""
    got: list[Any] = []
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(d.home / "clawpen.sock"))
        s.sendall(json.dumps(request).encode() + b"\n")
        for line in s.makefile("rb"):
            message = json.loads(line)
            if message == {"heartbeat": True}:
                continue
            if "item" in message:
                got.append(message["item"])
                if items and len(got) >= items:
                    return got, None
                continue
            return got, message
    raise AssertionError(f"no reply to {request}")


def result(d: DaemonCli, op: str, args: dict[str, Any]) -> Any:
    _, reply = exchange(d, {"op": op, "args": args, "heartbeat": 5.0})
    assert reply is not None and reply["ok"] is True, reply
    return reply["result"]


def test_the_earlier_cli_s_requests_still_work(daemon: DaemonCli) -> None:
    daemon.write(DEMO)
    spec = str(daemon.spec)
    up_args = {
        "file": spec, "bots": [], "dry_run": False, "who": "root", "progress": True, "wait": True,
        "wait_timeout": 60.0, "allow_empty": False,
    }  # fmt: skip
    daemon.cli("ps")  # starts the daemon
    progress, reply = exchange(daemon, {"op": "up", "args": up_args, "heartbeat": 5.0})
    assert reply is not None and reply["ok"], reply
    up = reply["result"]
    assert up["create"] == ["demo"] and up["release"] == 1 and up["wait"]["ok"] is True
    assert any("demo" in str(p.get("wait")) for p in progress)
    rows = result(daemon, "ps", {})
    assert rows[0]["state"] == "running" and set(rows[0]) >= PS_ROW
    status = result(daemon, "status", {"bots": ["demo"]})
    assert set(status) >= STATUS and status["instances"][0]["pid"] == rows[0]["pid"]
    events = result(daemon, "events", {"bot": "demo", "follow": False})
    assert events and set(events[0]) >= EVENT
    followed, _ = exchange(daemon, {"op": "events", "args": {"bot": "demo", "follow": True}}, items=1)
    assert set(followed[0]) >= EVENT
    assert result(daemon, "releases", {})[0]["id"] == 1
    assert result(daemon, "stop", {"bots": ["demo"]}) == {"stopped": ["demo"]}
    assert wait_for(lambda: result(daemon, "ps", {})[0]["state"] == "stopped", 15, interval=0.1)
    assert result(daemon, "start", {"bots": ["demo"]}) == {"started": ["demo"]}
    assert wait_for(lambda: result(daemon, "ps", {})[0]["state"] == "running", 15, interval=0.1)
    again = result(daemon, "up", {**up_args, "progress": False})
    assert again["unchanged"] == ["demo"] and again["release"] == 2
    assert result(daemon, "down", {"bots": []}) == {"removed": ["demo"]}
    assert result(daemon, "ps", {}) == []


def test_a_bad_argument_over_the_socket_names_its_field(daemon: DaemonCli) -> None:
    daemon.cli("ps")  # starts the daemon
    _, reply = exchange(daemon, {"op": "up", "args": {"file": str(daemon.spec), "wait_timeout": "soon"}})
    assert reply is not None and reply["ok"] is False
    error = reply["error"]
    assert error["exit_code"] == 2 and error["where"] == "up.wait_timeout", error
    _, reply = exchange(daemon, {"op": "up", "args": {"file": str(daemon.spec), "dryrun": True}})
    assert reply is not None and reply["error"]["where"] == "up.dryrun"  # a typo is named, not ignored
    assert daemon.json("releases") == []  # nothing applied
    assert result(daemon, "ps", {}) == []  # control: the daemon serves on
    assert "Traceback" not in (daemon.home / "daemon.log").read_text()
