"""Following a log waits on inotify: a new line arrives at once, not after a poll interval."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from clawpen.logs import watch
from clawpen.logs.query import LogRecord, follow
from clawpen.logs.watch import FileWatch
from clawpen.logs.writer import LogWriter


def _follow_in_thread(tmp_path, count, poll_interval):
    got: list[tuple[float, LogRecord]] = []
    done = threading.Event()

    def consume():
        for record in follow(tmp_path, "bot", stop=done.is_set, poll_interval=poll_interval):
            got.append((time.monotonic(), record))
            if len(got) >= count:
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return got, done, thread


def test_a_new_line_wakes_the_follower_long_before_the_poll_interval(tmp_path):
    writer = LogWriter(tmp_path, "bot", time.time)
    writer.write("out", b"first\n")
    got, done, thread = _follow_in_thread(tmp_path, 3, poll_interval=30.0)
    time.sleep(0.3)  # the follower is waiting now
    sent = []
    for text in (b"one\n", b"two\n", b"three\n"):
        sent.append(time.monotonic())
        writer.write("out", text)
        time.sleep(0.1)
    thread.join(10)
    done.set()
    writer.close()
    assert [r.text for _, r in got] == ["one", "two", "three"]
    # polling every 30 s could not have seen them; each arrived within a second of its write
    assert all(at - s < 1.0 for (at, _), s in zip(got, sent, strict=True))


def test_other_files_in_the_folder_do_not_wake_the_watch(tmp_path):
    (tmp_path / "bot.log").write_bytes(b"")
    with FileWatch(tmp_path / "bot.log") as w:
        assert w.active
        other = tmp_path / "other.log"
        stopper = threading.Timer(0.05, lambda: other.write_bytes(b"x\n" * 100))
        stopper.start()
        started = time.monotonic()
        assert w.wait(0.4) is False
        assert time.monotonic() - started >= 0.35
        stopper.join()
        threading.Timer(0.05, lambda: (tmp_path / "bot.log").write_bytes(b"y\n")).start()
        assert w.wait(5.0) is True


def test_without_inotify_the_follower_polls(tmp_path, monkeypatch):
    def refuse():
        raise OSError(errno.EMFILE, "inotify instances used up")

    monkeypatch.setattr(watch, "INotify", refuse)
    assert FileWatch(tmp_path / "bot.log").active is False
    writer = LogWriter(tmp_path, "bot", time.time)
    got, done, thread = _follow_in_thread(tmp_path, 2, poll_interval=0.05)
    time.sleep(0.2)
    writer.write("out", b"a\n")
    writer.write("out", b"b\n")
    thread.join(10)
    done.set()
    writer.close()
    assert [r.text for _, r in got] == ["a", "b"]


@pytest.mark.parametrize("missing", [True, False])
def test_a_missing_folder_falls_back_and_the_watch_closes(tmp_path, missing):
    folder = tmp_path / "logs"
    if not missing:
        folder.mkdir()
    w = FileWatch(folder / "bot.log")
    assert w.active is (not missing)
    w.close()
    assert w.active is False
