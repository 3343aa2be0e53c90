"""The CLI's client never hangs on a daemon that does not answer, and never gives up on one that
works slowly: time limits between messages, heartbeats, the daemon's state from /proc."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clawpen.daemon import rpc
from clawpen.daemon.client import DEFAULT_TIMEOUT, Client, DaemonNotAnswering, proc_state, timeout_from_env
from clawpen.errors import HostError, UsageError


@pytest.fixture
def home() -> Iterator[Path]:
    # A short path: a Unix socket's path is at most 107 bytes, pytest's tmp_path can be longer.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cp-cli-") as d:
        yield Path(d)


def test_a_daemon_that_accepts_and_never_answers_times_out_with_its_pid_and_state(home: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(home / "clawpen.sock"))
    server.listen(8)
    try:
        client = Client(home, timeout=1.0)
        start = time.monotonic()
        with pytest.raises(DaemonNotAnswering) as caught:
            client.call("ps", autostart=False)
        took = time.monotonic() - start
        conn, _ = server.accept()  # the request did arrive, with a heartbeat asked for
        with conn:
            request = json.loads(conn.makefile("rb").readline())
    finally:
        server.close()
    assert 0.9 < took < 3.0, took
    err = caught.value
    assert err.exit_code == 1
    # the listener is this test process (SO_PEERCRED), running: not stopped, so it waited the limit
    assert f"the daemon does not answer (pid {os.getpid()}, state " in err.what
    assert err.where == str(home / "clawpen.sock")
    assert err.hint and "CLAWPEN_TIMEOUT" in err.hint
    assert request["op"] == "ps" and 0 < request[rpc.HEARTBEAT_KEY] <= 1.0


def test_a_full_backlog_is_a_daemon_that_does_not_answer_not_a_missing_one(home: Path) -> None:
    """Connecting to a listener that never accepts fails with EAGAIN once its backlog is full;
    that must not look like "no daemon" (which would start a second one)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(home / "clawpen.sock"))
    server.listen(0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(home / "clawpen.sock"))
            except BlockingIOError:
                s.close()
                break
            fillers.append(s)
        (home / "daemon.pid").write_text(f"{os.getpid()}\n")
        start = time.monotonic()
        with pytest.raises(DaemonNotAnswering) as caught:
            Client(home, timeout=0.5).call("ps", autostart=False)
        assert time.monotonic() - start < 2.5
        assert f"pid {os.getpid()}" in caught.value.what
    finally:
        for s in fillers:
            s.close()
        server.close()


def test_no_daemon_at_all_is_still_an_os_error_at_once(home: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FileNotFoundError):
        Client(home, timeout=5).call("ps", autostart=False)
    assert time.monotonic() - start < 0.5


ECHO_DAEMON = textwrap.dedent("""
    import json, socket, sys
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sys.argv[1]); srv.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            try:  # a client that gave up while we were stopped has hung up
                req = json.loads(conn.makefile("rb").readline())
                conn.sendall(json.dumps({"ok": True, "result": {"pong": req["op"]}}).encode() + b"\\n")
            except (OSError, ValueError):
                pass
""")


def test_a_stopped_daemon_is_reported_at_once_with_kill_cont_and_works_after_sigcont(home: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", ECHO_DAEMON, str(home / "clawpen.sock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        client = Client(home, timeout=20)  # a long limit: a stopped daemon must not need it
        assert client.call("ps", autostart=False) == {"pong": "ps"}  # positive control
        os.kill(proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while proc_state(proc.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        with pytest.raises(DaemonNotAnswering) as caught:
            client.call("ps", autostart=False)
        assert time.monotonic() - start < 3.0
        assert f"(pid {proc.pid}, state T: stopped)" in caught.value.what
        assert caught.value.hint and f"kill -CONT {proc.pid}" in caught.value.hint
        os.kill(proc.pid, signal.SIGCONT)
        assert client.call("status", autostart=False) == {"pong": "status"}
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


class _AsyncServer:
    """A real asyncio Unix server in a thread, answering with ``handler(request, writer)``."""

    def __init__(
        self, path: Path, handler: Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[None]]
    ):
        self.path, self.handler = path, handler
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self.done = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tasks.add(asyncio.current_task())  # type: ignore[arg-type]
            try:
                request = json.loads(await reader.readline())
                await self.handler(request, writer)
                await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_unix_server(serve, path=str(self.path))
        self.ready.set()
        await self.done.wait()
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def __enter__(self) -> _AsyncServer:
        self.thread.start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.done.set)
        self.thread.join(5)
        self.loop.close()


async def _slow_op(request: dict[str, Any], writer: asyncio.StreamWriter, *, items: int = 0) -> None:
    async def work() -> str:
        for i in range(items):
            writer.write(rpc.item({"build": f"step {i}"}))
            await asyncio.sleep(0.3)
        await asyncio.sleep(2.0)
        return "done"

    result = await rpc.with_heartbeat(work(), writer, rpc.heartbeat_interval(request))
    writer.write(rpc.ok(result))


def test_heartbeats_keep_a_long_operation_alive_past_the_time_limit(home: Path) -> None:
    with _AsyncServer(home / "clawpen.sock", _slow_op):
        start = time.monotonic()
        assert Client(home, timeout=0.8).call("up", autostart=False) == "done"
        assert time.monotonic() - start > 1.9  # far longer than the limit, and it waited


def test_items_reach_the_progress_callback_and_heartbeats_do_not(home: Path) -> None:
    async def handler(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        await _slow_op(request, writer, items=3)

    seen: list[Any] = []
    with _AsyncServer(home / "clawpen.sock", handler):
        result = Client(home, timeout=0.6).call_with_progress("up", seen.append)
    assert result == "done"
    assert seen == [{"build": "step 0"}, {"build": "step 1"}, {"build": "step 2"}]


def test_without_heartbeats_the_same_silence_times_out(home: Path) -> None:
    """Control: a daemon that ignores the heartbeat request (an older one) and is silent for
    longer than the limit makes the client give up, although it is running."""

    async def silent(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2.0)
        writer.write(rpc.ok("late"))

    with (
        _AsyncServer(home / "clawpen.sock", silent),
        pytest.raises(DaemonNotAnswering, match="does not answer"),
    ):
        Client(home, timeout=0.8).call("up", autostart=False)


def test_heartbeat_interval_is_bounded_and_needs_a_number() -> None:
    assert rpc.heartbeat_interval({}) is None
    assert rpc.heartbeat_interval({"heartbeat": True}) is None
    assert rpc.heartbeat_interval({"heartbeat": "5"}) is None
    assert rpc.heartbeat_interval({"heartbeat": float("nan")}) is None
    assert rpc.heartbeat_interval({"heartbeat": 0}) is None
    assert rpc.heartbeat_interval({"heartbeat": 1e-9}) == rpc.MIN_HEARTBEAT
    assert rpc.heartbeat_interval({"heartbeat": 1e12}) == rpc.MAX_HEARTBEAT
    assert rpc.heartbeat_interval({"heartbeat": 2.5}) == 2.5
    assert rpc.is_heartbeat(json.loads(rpc.HEARTBEAT))
    assert not rpc.is_heartbeat({"heartbeat": True, "ok": True})


def test_clawpen_timeout_from_the_environment() -> None:
    assert timeout_from_env({}) == DEFAULT_TIMEOUT
    assert timeout_from_env({"CLAWPEN_TIMEOUT": "2.5"}) == 2.5
    assert timeout_from_env({"CLAWPEN_TIMEOUT": "2m"}) == 120
    assert timeout_from_env({"CLAWPEN_TIMEOUT": "0"}) is None  # for ever
    for bad in ("soon", "-1", "nan", "1e400"):
        with pytest.raises(UsageError) as caught:
            timeout_from_env({"CLAWPEN_TIMEOUT": bad})
        assert caught.value.where == "environment variable CLAWPEN_TIMEOUT"
        assert caught.value.exit_code == 2


def test_a_bad_clawpen_timeout_is_a_usage_error_on_the_command_line(home: Path) -> None:
    env = {**os.environ, "CLAWPEN_HOME": str(home), "CLAWPEN_TIMEOUT": "soon"}
    result = subprocess.run(
        [sys.executable, "-m", "clawpen", "ps"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "CLAWPEN_TIMEOUT" in result.stderr and "Traceback" not in result.stderr
    assert not (home / "clawpen.sock").exists()  # no daemon was started


def _resetting_server(path: Path, answer_on: int) -> tuple[socket.socket, list[str], threading.Thread]:
    """A socket that resets (closes with the request unread) every connection but ``answer_on``,
    and answers that one with an empty list; the ops it saw are collected."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    seen: list[str] = []

    def serve() -> None:
        for n in range(1, 3):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                time.sleep(0.1)  # the whole request has arrived
                head = conn.recv(1 << 16, socket.MSG_PEEK)  # read, but left unread in the socket
                seen.append(json.loads(head.split(b"\n")[0])["op"])
                if n == answer_on:
                    conn.recv(1 << 16)
                    conn.sendall(b'{"ok": true, "result": []}\n')
                # else: closed with the request unread -> the client's recv gets ECONNRESET

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, seen, thread


def test_a_dropped_connection_is_asked_again_for_a_read_and_a_clear_error_for_a_change(home: Path) -> None:
    server, seen, thread = _resetting_server(home / "clawpen.sock", answer_on=2)
    try:
        assert Client(home, timeout=2.0).call("ps", autostart=False) == []  # reset once, then answered
    finally:
        thread.join(3)
        server.close()
    assert seen == ["ps", "ps"]
    (home / "clawpen.sock").unlink()
    server, seen, thread = _resetting_server(home / "clawpen.sock", answer_on=0)
    try:
        with pytest.raises(HostError) as caught:  # a change is never sent twice
            Client(home, timeout=2.0).call("stop", autostart=False, bots=["x"])
    finally:
        server.close()
        thread.join(3)
    assert seen == ["stop"]
    assert "the daemon dropped the connection during `stop`" in caught.value.what
    assert caught.value.hint and "daemon.log" in caught.value.hint
