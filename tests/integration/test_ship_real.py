"""Log shipping by a real daemon to the real receivers (issue 20): rsyslog over TLS (RFC 5424,
octet-counted, its own CA) and systemd-journal-remote. A bot prints a numbered sequence and,
now and then, its API token: every line arrives exactly once and in order across a receiver
outage of 30 s (journal-remote stopped; rsyslog hung), a daemon SIGKILL and a daemon restart
(duplicates only at the acknowledged boundary, and counted); the token never arrives (the log
writer redacts it before it is stored, so before it is shipped); each line carries bot,
replica, stream and host."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from helpers import CLAWPEN, PY, DaemonCli, alive, wait_for
from logsink_env import SERVER_NAME, LogSink, journal_remote, rsyslog_tls

from clawpen.logs.query import read_logs

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]

TOKEN = "tok-" + "7f3a9c" * 6
LINES = 4000
BOT = (
    "import os, time\nrun = os.urandom(4).hex()\ntoken = os.environ['API_TOKEN']\n"
    f"for i in range({LINES}):\n    print(run, i, flush=True)\n"
    "    if i % 1000 == 0:\n        print(run, 'using', i, token, flush=True)\n"
    "    time.sleep(0.005)\ntime.sleep(3600)\n"
)


def status(daemon: DaemonCli) -> dict[str, Any]:
    data = json.loads(daemon.cli("logs", "ship", "status", "--json").stdout)
    (target,) = data["targets"]
    assert isinstance(target, dict)
    return target


def local_texts(daemon: DaemonCli) -> list[str]:
    return [r.text for r in read_logs(daemon.home / "logs", "seq")]


def target_toml(kind: str, sink: LogSink) -> str:
    if kind == "syslog":
        assert sink.pki is not None
        return (
            f'type = "syslog"\nurl = "tls://127.0.0.1:{sink.port}"\nca = "{sink.pki.ca}"\n'
            f'server_name = "{SERVER_NAME}"\n'
        )
    return f'type = "journal-remote"\nurl = "{sink.url}"\n'


RECEIVERS: dict[str, Callable[[Path], AbstractContextManager[LogSink]]] = {
    "syslog": lambda tmp: rsyslog_tls(tmp),
    "journal-remote": lambda tmp: journal_remote(tmp),
}


@pytest.fixture(params=sorted(RECEIVERS))
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, LogSink]]:
    with RECEIVERS[request.param](tmp_path) as sink:
        yield request.param, sink


def test_every_line_arrives_once_in_order_and_no_secret(
    daemon: DaemonCli, receiver: tuple[str, LogSink]
) -> None:
    kind, sink = receiver
    argv = [CLAWPEN, "secrets", "set", "API_TOKEN"]
    subprocess.run(argv, input=TOKEN + "\n", text=True, env=daemon.env, check=True, timeout=60)
    daemon.write(f"""
        [bots.seq]
        command = ["{PY}", "-c", {json.dumps(BOT)}]
        secrets = ["API_TOKEN"]
        secret_env = ["API_TOKEN"]
        restart = {{ policy = "no" }}

        [logs.ship]
        batch = 100

        [[logs.ship.targets]]
        name = "central"
        {target_toml(kind, sink)}
    """)
    daemon.cli("up", "--detach")

    def texts() -> list[str]:
        return [line.text for line in sink.lines() if line.bot == "seq"]

    assert wait_for(lambda: len(texts()) >= 200, 60), (status(daemon), sink.stderr()[-2000:])
    assert status(daemon)["connected"]

    # an outage of 30 s: journal-remote stopped and started on the same port; rsyslog hung
    # (SIGSTOP): syslog over TCP has no acknowledgement of its own, so an rsyslog that exits drops
    # what its TCP took but it had not read (docs/logs.md); a hung one keeps it
    outage, back = (sink.pause, sink.resume) if kind == "syslog" else (sink.stop, sink.start)
    outage()
    time.sleep(30)
    away = status(daemon)
    if kind == "journal-remote":  # (a hung rsyslog's TCP takes a few MiB before it stalls)
        assert away["lag_seconds"] > 10 and not away["connected"], away
    back()
    assert wait_for(lambda: status(daemon)["lag_seconds"] == 0, 90, interval=1), status(daemon)
    counted = status(daemon)["duplicates"]

    pid = daemon.pid()  # SIGKILL the daemon while the bot writes; the next one resumes
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid), 10)
    daemon.cli("ps")
    assert wait_for(lambda: (daemon.pid() or pid) != pid, 15)

    def caught_up() -> bool:
        got = set(texts())
        local = local_texts(daemon)
        return bool(local) and all(t in got for t in local) and status(daemon)["lag_seconds"] == 0

    assert wait_for(caught_up, 120, interval=1), status(daemon)
    counted += status(daemon)["duplicates"]

    pid = daemon.pid()  # a clean restart
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not alive(pid), 30)
    before = len(local_texts(daemon))
    daemon.cli("restart", "seq")
    assert wait_for(lambda: len(local_texts(daemon)) > before + 100, 60)
    assert wait_for(caught_up, 120, interval=1), status(daemon)
    counted += status(daemon)["duplicates"]

    local = local_texts(daemon)
    lines = [line for line in sink.lines() if line.bot == "seq"]
    got = [line.text for line in lines]
    assert len(local) >= LINES  # positive control: the bot wrote (its second run too)
    unique = list(dict.fromkeys(got))
    assert unique == local  # every line, once, in order
    duplicates = len(got) - len(unique)
    assert duplicates <= counted, (duplicates, counted)
    index = {text: i for i, text in enumerate(local)}
    steps_back = sum(1 for a, b in itertools.pairwise(got) if index[b] <= index[a])
    assert steps_back <= 3, steps_back  # duplicates only at the boundaries
    assert sum("using" in t for t in local) >= 4  # the bot printed its token...
    assert not any(TOKEN in t for t in got)  # ...which never left the host
    assert {(line.stream, line.host) for line in lines} == {("out", socket.gethostname())}
    print(f"{kind}: lines {len(local)} received {len(got)} duplicates {duplicates}/{counted}")
