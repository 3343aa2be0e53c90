"""Published ports survive the daemon: the port relay is a process of its own, outside the
daemon, adopted by the next daemon and stopped with the bot.

The daemon runs in a namespace of the test (``net.host``, which plays the machine; fixtures of
test_net_publish.py); every request goes to that namespace's 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import test_net_publish as base
from helpers import alive, wait_for, with_marker
from test_net_publish import SERVER, Net, NetDaemon, free_port, wait_body

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.netns, pytest.mark.slow]

net = base.net  # the fixtures: a namespace that plays the machine, a daemon running in it
netd = base.netd

# bot cgroups are named clawpen/<bot>.<replica> machine-wide: a name of this session's own keeps
# other test sessions' daemons (which may run a "web" at the same time) off this bot
BOT = f"pub{uuid.uuid4().hex[:8]}"
ANSWER = f"{BOT} none)"  # the bot's name and the last word of its resolv.conf (no network)
REQUESTS = 200
GAP = 0.025  # 200 requests over about 5 s


def relay_record(d: NetDaemon, key: str = f"{BOT}.0") -> dict:
    return json.loads((d.home / "run" / "publish" / f"{key}.json").read_text())


def relay_pid(d: NetDaemon) -> int | None:
    """The relay pid on record, or None while there is no record (a relay is being replaced)."""
    try:
        return int(relay_record(d)["pid"])
    except FileNotFoundError:
        return None


def listeners(n: Net, port: int) -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", n.host, "ss", "-Hltnp", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def stream(n: Net, port: int, results: list[str]) -> None:
    for _ in range(REQUESTS):
        results.append(n.get(n.host, "127.0.0.1", port))
        time.sleep(GAP)


def serve(netd: NetDaemon, net: Net) -> int:
    """Bring up the published HTTP bot; its host port once it answers there."""
    port = free_port()
    netd.write(f"""
        [bots.{BOT}]
        command = ["python3", "-c", "{SERVER}"]
        network.publish = ["127.0.0.1:{port}:8000"]
        """)
    netd.cli("up")
    assert wait_body(net, net.host, "127.0.0.1", port, BOT) == ANSWER
    return port


def test_a_daemon_kill_interrupts_no_request(netd: NetDaemon, net: Net) -> None:
    port = serve(netd, net)
    daemon_pid = netd.pid()
    relay = relay_record(netd)["pid"]
    assert alive(relay) and relay != daemon_pid
    # one listener, held by the relay process, not by the daemon
    (line,) = listeners(net, port)
    assert f"pid={relay}," in line and f"pid={daemon_pid}," not in line
    bot_pid = netd.ps()[BOT]["pid"]

    results: list[str] = []
    client = threading.Thread(target=stream, args=(net, port, results))
    client.start()
    assert wait_for(lambda: len(results) >= 40, 10)
    netd.kill()  # SIGKILL in the middle of the stream
    done_while_down = len(results)
    assert wait_for(lambda: len(results) >= done_while_down + 20, 10)  # served with no daemon at all
    assert netd.pid() is None
    netd.start()  # a new daemon, while requests keep coming
    client.join(30)
    assert not client.is_alive()
    failed = [r for r in results if r != ANSWER]
    assert len(results) == REQUESTS and not failed, [(i, r) for i, r in enumerate(results) if r in failed][:5]

    # the new daemon adopted the relay and the bot: same pids, still one listener
    assert netd.pid() != daemon_pid
    assert netd.ps()[BOT]["pid"] == bot_pid
    assert relay_record(netd)["pid"] == relay and alive(relay)
    (line,) = listeners(net, port)
    assert f"pid={relay}," in line
    assert any(
        f"adopted the running port relay (pid {relay})" in e.get("reason", "") for e in netd.events(BOT)
    )
    assert net.get(net.host, "127.0.0.1", port) == ANSWER

    # a restart of the bot (a new sandbox, a new namespace): the same relay follows it
    netd.cli("restart", BOT)
    assert wait_for(lambda: netd.ps()[BOT]["pid"] not in (None, bot_pid), 20)
    assert wait_body(net, net.host, "127.0.0.1", port, BOT) == ANSWER
    assert relay_record(netd)["pid"] == relay

    # down: the relay is gone, the port is free, nothing is left
    publish_dir = netd.home / "run" / "publish"
    netd.cli("down")
    assert wait_for(lambda: not alive(relay), 10)
    assert listeners(net, port) == []
    assert net.get(net.host, "127.0.0.1", port) == "refused"
    assert not with_marker(str(publish_dir))
    assert not any(Path(publish_dir).glob(f"{BOT}.0.*"))


def test_a_stopped_bot_takes_its_relay_along(netd: NetDaemon, net: Net) -> None:
    port = serve(netd, net)
    first = relay_record(netd)["pid"]
    netd.cli("stop", BOT)
    assert wait_for(lambda: not alive(first), 10)
    assert net.get(net.host, "127.0.0.1", port) == "refused"
    netd.cli("start", BOT)
    assert wait_body(net, net.host, "127.0.0.1", port, BOT) == ANSWER  # positive control
    second = relay_record(netd)["pid"]
    assert second != first and alive(second)
    assert len(listeners(net, port)) == 1
    # a relay that dies while the daemon runs is started again
    os.kill(second, signal.SIGKILL)
    assert wait_for(lambda: relay_pid(netd) not in (None, second, first), 10)
    assert wait_body(net, net.host, "127.0.0.1", port, BOT) == ANSWER
    assert any("ended; starting it again" in e.get("reason", "") for e in netd.events(BOT))
