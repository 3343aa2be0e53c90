"""The published-port relay process (clawpen.net.portrelay) on its own, driven through the
daemon's side of it (clawpen.net.relayctl.RelayControl), with no daemon.

A namespace of the test's own plays the bot ("bot": a server on its 127.0.0.1:BOT_PORT that
answers "bot"); the relay's listener is on the machine's loopback (port 0: a free one). A
second server, on the *machine's* 127.0.0.1 at the same BOT_PORT, plays a host service that a
relay must never reach.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import alive, wait_for, with_marker

from clawpen import netns
from clawpen.net import relayctl
from clawpen.procfs import pid_start_time

pytestmark = [pytest.mark.root, pytest.mark.netns]


class Server:
    """Answers every connection with ``reply`` and closes; counts the connections it saw."""

    def __init__(self, sock: socket.socket, reply: bytes) -> None:
        self.sock, self.reply, self.seen = sock, reply, 0
        self.sock.listen(64)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.seen += 1
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, object]]:
    name = f"clawpen-t-{uuid.uuid4().hex[:6]}-b"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    fd = netns.open_netns(f"/run/netns/{name}")
    try:
        inside = netns.socket_in(fd)
    finally:
        os.close(fd)
    inside.bind(("127.0.0.1", 0))
    bot_port = inside.getsockname()[1]
    host_sock = socket.socket()
    host_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        host_sock.bind(("127.0.0.1", bot_port))
    except OSError:
        pytest.fail(f"127.0.0.1:{bot_port} is taken on this machine; run again")
    bot, host = Server(inside, b"bot"), Server(host_sock, b"host")
    ctl = relayctl.RelayControl(tmp_path / "publish", "web.0", ["127.0.0.1:0:80"], ())
    try:
        yield {"ns": f"/run/netns/{name}", "bot_port": bot_port, "bot": bot, "host": host, "ctl": ctl}
    finally:
        ctl.stop()
        bot.close()
        host.close()
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert not with_marker(str(tmp_path / "publish")), "a relay process was left running"


def spawn(ctl: relayctl.RelayControl, bot_port: int) -> int:
    """Start the relay on a fresh 127.0.0.1 listener; return the host port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = int(sock.getsockname()[1])
    ctl.spawn([(sock, bot_port)])
    return port


def get(port: int, timeout: float = 3) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            data = b""
            while chunk := s.recv(100):
                data += chunk
    except ConnectionResetError:  # at connect or at the first read
        return "reset"
    except TimeoutError:
        return "timeout"
    return data.decode() or "closed"


def test_relays_into_the_bot_namespace_and_never_into_its_own(world: dict) -> None:
    ctl: relayctl.RelayControl = world["ctl"]
    bot_port = world["bot_port"]
    port = spawn(ctl, bot_port)
    assert get(port) in ("reset", "closed")  # no target yet: nothing is reached
    ctl.write_target({"netns": world["ns"], "pid": None, "start": None})
    assert get(port) == "bot"  # positive control: the path works
    # pointed at the relay's own namespace (the machine's, where "host" listens on the same
    # port): refused before any connection is made
    ctl.write_target({"netns": f"/proc/{ctl.pid}/ns/net", "pid": None, "start": None})
    seen = world["host"].seen
    assert get(port) in ("reset", "closed")
    assert world["host"].seen == seen == 0
    # a pid whose start time does not match (a dead bot's reused pid): refused as well
    holder = subprocess.Popen(["ip", "netns", "exec", world["ns"].rsplit("/", 1)[1], "sleep", "30"])
    try:
        assert wait_for(
            lambda: os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"), 5
        )
        start = pid_start_time(holder.pid)
        assert start is not None
        ctl.write_target({"netns": f"/proc/{holder.pid}/ns/net", "pid": holder.pid, "start": start})
        assert get(port) == "bot"  # the right process: relayed
        ctl.write_target({"netns": f"/proc/{holder.pid}/ns/net", "pid": holder.pid, "start": start + 1})
        bot_seen = world["bot"].seen
        assert get(port) in ("reset", "closed")
        assert world["bot"].seen == bot_seen
    finally:
        holder.kill()
        holder.wait()
    assert world["host"].seen == 0


def test_separate_session_few_capabilities_no_fd_leak(world: dict) -> None:
    ctl: relayctl.RelayControl = world["ctl"]
    port = spawn(ctl, world["bot_port"])
    pid = ctl.pid
    assert pid is not None
    ctl.write_target({"netns": world["ns"], "pid": None, "start": None})
    assert get(port) == "bot"
    assert os.getsid(pid) == pid != os.getsid(0)  # a session (and process group) of its own
    want = (1 << 19) | (1 << 21)  # CAP_SYS_PTRACE, CAP_SYS_ADMIN
    assert _caps(pid) == (want, want, "1")
    for _ in range(100):
        assert get(port) == "bot"

    def kinds() -> dict[str, int]:
        found: dict[str, int] = {}
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                kind = os.readlink(f"/proc/{pid}/fd/{fd}").split(":", 1)[0]
                found[kind] = found.get(kind, 0) + 1
        return found

    def settled() -> bool:
        # the listener is the only socket left, no namespace fd stays open, and the pipes are the
        # signal pipe plus at most two spare pipes per worker thread
        workers = len(os.listdir(f"/proc/{pid}/task")) - 1
        k = kinds()
        return k.get("socket") == 1 and "net" not in k and k.get("pipe", 0) <= 2 + 4 * workers <= 2 + 32

    assert wait_for(settled, 5), kinds()


def _caps(pid: int) -> tuple[int, int, str]:
    """CapEff, CapBnd and NoNewPrivs of a process."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    return int(status["CapEff"], 16), int(status["CapBnd"], 16), status["NoNewPrivs"].strip()


def test_stop_adopt_and_sweep(world: dict, tmp_path: Path) -> None:
    ctl: relayctl.RelayControl = world["ctl"]
    port = spawn(ctl, world["bot_port"])
    ctl.write_target({"netns": world["ns"], "pid": None, "start": None})
    pid, start = ctl.pid, ctl.start
    assert pid and start
    # a new daemon adopts it from the record, for the same entries only
    again = relayctl.RelayControl(ctl.folder, "web.0", ["127.0.0.1:0:80"], ())
    assert again.adopt() and again.pid == pid
    # a wrong start time (a reused pid) is never signalled
    relayctl.terminate(pid, start + 1, grace=0.2)
    assert alive(pid) and get(port) == "bot"
    # the sweep stops relays of instances that are not kept, and removes their files
    assert relayctl.sweep(ctl.folder, {"web.0"}) == []
    assert alive(pid)
    assert relayctl.sweep(ctl.folder, set()) == ["web.0"]
    assert ctl.proc is not None
    ctl.proc.wait(5)
    assert not alive(pid)
    assert list(ctl.folder.iterdir()) == []
    assert _refused(port)  # the listener went with it


def _refused(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def test_bounds_connection_cap_and_idle_timeout(world: dict) -> None:
    ctl: relayctl.RelayControl = world["ctl"]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = int(sock.getsockname()[1])
    ctl.write_target({"netns": world["ns"], "pid": None, "start": None})
    # a bot that keeps connections open and silent
    fd = netns.open_netns(world["ns"])
    try:
        quiet = netns.socket_in(fd)
    finally:
        os.close(fd)
    quiet.bind(("127.0.0.1", 0))
    quiet.listen(16)
    held: list[socket.socket] = []

    def keep() -> None:
        with contextlib.suppress(OSError):  # the test closes the listener when it is done
            held.extend(quiet.accept()[0] for _ in range(3))

    threading.Thread(target=keep, daemon=True).start()
    ctl.spawn([(sock, quiet.getsockname()[1])], max_conns=2, idle=1.0)
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    assert wait_for(lambda: len(held) == 2, 5)
    assert get(port) == "reset"  # over the cap: reset at once
    # the two idle ones are torn down after about a second without a byte
    started = time.monotonic()
    for c in clients:
        assert c.recv(1) == b""
        c.close()
    assert time.monotonic() - started < 4
    assert wait_for(lambda: any("2 connections open" in w for w in ctl.take_events()), 5)
    for s in held:
        s.close()
    quiet.close()
