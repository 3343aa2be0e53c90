"""The CLI against a real daemon: it never hangs on a stopped daemon, and a bot's escape
sequences reach the operator's terminal shown, not obeyed."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest
from helpers import CLAWPEN, DaemonCli, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


def test_a_stopped_daemon_makes_ps_fail_fast_with_its_pid_and_state_then_sigcont_heals(
    daemon: DaemonCli,
) -> None:
    daemon.cli("ps")  # starts the daemon
    pid = daemon.pid()
    assert pid is not None
    env = {**daemon.env, "CLAWPEN_TIMEOUT": "20"}  # a stopped daemon must not need the whole limit
    os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_for(lambda: _state(pid) == "T", 5)
        start = time.monotonic()
        result = subprocess.run(
            [CLAWPEN, "ps"], capture_output=True, text=True, env=env, timeout=60, cwd=daemon.spec.parent
        )
        took = time.monotonic() - start
        assert result.returncode == 1, result.stderr
        assert took < 5, took
        assert f"error: the daemon does not answer (pid {pid}, state T: stopped)" in result.stderr
        assert f"hint: it is stopped: resume it with `kill -CONT {pid}`" in result.stderr
        assert "Traceback" not in result.stderr
        assert _state(pid) == "T"  # nothing was started or killed meanwhile
    finally:
        os.kill(pid, signal.SIGCONT)
    rows = json.loads(daemon.cli("ps", "--json").stdout)  # positive control: it answers again
    assert rows == []
    assert daemon.pid() == pid  # the same daemon: the CLI did not start a second one


def test_a_quiet_events_follow_outlives_the_time_limit(daemon: DaemonCli) -> None:
    """The limit is between messages: the daemon's heartbeats keep a silent stream alive."""
    daemon.cli("ps")
    proc = subprocess.Popen(
        [CLAWPEN, "events", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**daemon.env, "CLAWPEN_TIMEOUT": "1"},
        cwd=daemon.spec.parent,
    )
    try:
        time.sleep(3.5)  # three and a half limits without a single event
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert "does not answer" not in err
    assert "daemon started" in out  # what it had to say, it said


HOSTILE = (
    'printf "A\\033]0;pwned-title\\007B\\n'  # OSC 0: sets the window title
    "\\033]52;c;aGVsbG8=\\007clip\\n"  # OSC 52: writes the clipboard
    "\\033[2J\\033[Hcleared\\n"  # CSI: clears the screen
    "\\302\\2332Jc1\\n"  # U+009B, the one-byte CSI
    "user\\342\\200\\256txt.exe\\n"  # U+202E: right-to-left override
    '[bold]markup[/bold]\\tend\\n"; sleep 300'
)
EXACT = [
    "A\x1b]0;pwned-title\x07B",
    "\x1b]52;c;aGVsbG8=\x07clip",
    "\x1b[2J\x1b[Hcleared",
    "\u009b2Jc1",
    "user\u202etxt.exe",
    "[bold]markup[/bold]\tend",
]
SHOWN = [
    "A\\x1b]0;pwned-title\\x07B",
    "\\x1b]52;c;aGVsbG8=\\x07clip",
    "\\x1b[2J\\x1b[Hcleared",
    "\\u009b2Jc1",
    "user\\u202etxt.exe",
    "[bold]markup[/bold]\tend",
]


def _on_a_terminal(daemon: DaemonCli, *args: str) -> bytes:
    """``clawpen ARGS`` with its stdout on a pseudo-terminal (so isatty() is true), output as the
    terminal received it (output processing off: no \\n -> \\r\\n)."""
    primary, secondary = pty.openpty()
    attrs = termios.tcgetattr(secondary)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(secondary, termios.TCSANOW, attrs)
    proc = subprocess.Popen(
        [CLAWPEN, *args], stdin=subprocess.DEVNULL, stdout=secondary, stderr=subprocess.PIPE, env=daemon.env
    )
    os.close(secondary)
    got = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if not _readable(primary):
                continue
            try:
                chunk = os.read(primary, 1 << 16)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            got += chunk
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(primary)
        if proc.stderr:
            proc.stderr.close()
    return got


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(200))


def _texts(out: bytes) -> list[str]:
    """The text part of each `clawpen logs` line (after the stamp and the stream)."""
    return [line.split(" ", 2)[2] for line in out.decode("utf-8").splitlines()]


def test_a_bots_escape_sequences_are_shown_on_a_terminal_exact_with_raw_and_in_json(
    daemon: DaemonCli,
) -> None:
    daemon.write(f"""
        [bots.evil]
        command = ["sh", "-c", '{HOSTILE}']
    """)
    daemon.cli("up")
    assert wait_for(lambda: "end" in daemon.cli("logs", "evil").stdout, 15)

    shown = _on_a_terminal(daemon, "logs", "evil")
    assert _texts(shown) == SHOWN
    for obeyed in (b"\x1b", b"\x07", b"\xc2\x9b", b"\xe2\x80\xae"):
        assert obeyed not in shown

    raw = _on_a_terminal(daemon, "logs", "--raw", "evil")
    assert _texts(raw) == EXACT  # control: the sequences really were in the bot's output
    assert b"\x1b]0;pwned-title\x07" in raw

    piped = daemon.cli("logs", "evil").stdout  # a pipe: exact, as `grep` and files want it
    assert _texts(piped.encode()) == EXACT

    as_json = _on_a_terminal(daemon, "logs", "--json", "evil")
    assert b"\x1b" not in as_json  # json escapes it...
    assert [json.loads(line)["text"] for line in as_json.decode().splitlines()] == EXACT  # ...exactly
