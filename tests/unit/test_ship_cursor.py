"""The log shipper's cursor and reader: resuming across rotation and gzip, a damaged cursor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from clawpen.logs import store
from clawpen.logs.ship import cursor
from clawpen.logs.ship.cursor import CURRENT, CursorProblem, Position
from clawpen.logs.ship.reader import LogReader

BASE = 1_795_000_000.0


def record(n: int, stream: str = "out") -> bytes:
    at = BASE + n / 1000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(at))) + f".{round(at % 1 * 1e6):06d}Z"
    return f"{stamp} {stream} line {n}\n".encode()


def append(directory: Path, first: int, last: int, log: str = "web") -> None:
    with open(store.current_path(directory, log), "ab") as fh:
        for n in range(first, last):
            fh.write(record(n))


def rotate(directory: Path, now: float, *, gz: bool, log: str = "web") -> Path:
    rotated = store.rotate(directory, log, now)
    return (store.compress_file(rotated) or rotated) if gz else rotated


def texts(reader: LogReader, most: int = 10_000) -> list[bytes]:
    return [line.text for line in reader.read(most)]


def numbers(lines: list[bytes]) -> list[int]:
    return [int(t.split()[1]) for t in lines]


def test_reads_rotated_gz_log_and_current_in_order(tmp_path: Path) -> None:
    append(tmp_path, 0, 100)
    rotate(tmp_path, BASE + 1, gz=True)
    append(tmp_path, 100, 200)
    rotate(tmp_path, BASE + 2, gz=False)
    append(tmp_path, 200, 250)
    reader = LogReader(tmp_path, "web", None)
    assert numbers(texts(reader)) == list(range(250))
    assert reader.read(10) == []  # nothing new
    append(tmp_path, 250, 260)
    assert numbers(texts(reader)) == list(range(250, 260))


def test_resume_from_every_position_across_rotation_and_gzip(tmp_path: Path) -> None:
    """A cursor taken anywhere resumes exactly after its record, even when the file it names was
    rotated and compressed since."""
    append(tmp_path, 0, 30)
    reader = LogReader(tmp_path, "web", None)
    got = reader.read(10_000)
    positions = {n: line.end for n, line in zip(range(30), got, strict=True)}
    assert all(p.file == CURRENT for p in positions.values())
    rotate(tmp_path, BASE + 1, gz=True)  # the current file the cursors name is now a .gz
    append(tmp_path, 30, 40)
    rotate(tmp_path, BASE + 2, gz=False)
    append(tmp_path, 40, 45)
    for n, pos in positions.items():
        resumed = LogReader(tmp_path, "web", pos)
        assert numbers(texts(resumed)) == list(range(n + 1, 45)), n
        assert resumed.lost == ""
    # positions taken in the rotated files resume too
    reader = LogReader(tmp_path, "web", None)
    for line in reader.read(10_000):
        n = int(line.text.split()[1])
        assert numbers(texts(LogReader(tmp_path, "web", line.end))) == list(range(n + 1, 45))


def test_reader_follows_a_rotation_while_reading(tmp_path: Path) -> None:
    append(tmp_path, 0, 10)
    reader = LogReader(tmp_path, "web", None)
    assert numbers(texts(reader, 5)) == list(range(5))
    append(tmp_path, 10, 12)  # written just before the rotation
    rotate(tmp_path, BASE + 1, gz=True)
    append(tmp_path, 12, 15)
    assert numbers(texts(reader)) == list(range(5, 15))
    # twice in a row, the reader holding nothing open of the newest files
    rotate(tmp_path, BASE + 2, gz=True)
    append(tmp_path, 15, 16)
    rotate(tmp_path, BASE + 2, gz=False)
    append(tmp_path, 16, 18)
    assert numbers(texts(reader)) == list(range(15, 18))


def test_file_deleted_by_retention_is_reported_and_skipped(tmp_path: Path) -> None:
    append(tmp_path, 0, 10)
    first = rotate(tmp_path, BASE + 1, gz=True)
    append(tmp_path, 10, 20)
    rotate(tmp_path, BASE + 2, gz=True)
    append(tmp_path, 20, 25)
    pos = LogReader(tmp_path, "web", None).read(3)[-1].end
    assert pos.file == "20261117T080001" or pos.file.startswith("2026")
    first.unlink()
    reader = LogReader(tmp_path, "web", pos)
    assert "gone" in reader.lost
    assert numbers(texts(reader)) == list(range(10, 25))


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    append(tmp_path, 0, 2)
    line = record(2)
    with open(store.current_path(tmp_path, "web"), "ab") as fh:
        fh.write(line[:20])
    reader = LogReader(tmp_path, "web", None)
    assert numbers(texts(reader)) == [0, 1]
    with open(store.current_path(tmp_path, "web"), "ab") as fh:
        fh.write(line[20:])
    assert numbers(texts(reader)) == [2]


def test_unshipped_bytes_and_skip(tmp_path: Path) -> None:
    append(tmp_path, 0, 100)
    rotate(tmp_path, BASE + 1, gz=True)
    append(tmp_path, 100, 200)
    size = sum(len(record(n)) for n in range(200))
    reader = LogReader(tmp_path, "web", None)
    assert reader.unshipped_bytes() == size
    assert reader.next_at() == pytest.approx(BASE)
    lines, end = reader.skip(sum(len(record(n)) for n in range(149)) + 1)  # into record 149
    assert lines == 150
    assert end is not None
    assert numbers(texts(LogReader(tmp_path, "web", end))) == list(range(150, 200))
    assert reader.unshipped_bytes() == sum(len(record(n)) for n in range(150, 200))


def test_cursor_file_round_trip_and_damage(tmp_path: Path) -> None:
    path = cursor.cursor_path(tmp_path, "central")
    assert cursor.load(path) == {}
    positions = {
        "web": Position(CURRENT, 120, BASE, 77, "20261117T080001"),
        "db": Position("20261117T080001-1", 5, BASE),
    }
    cursor.save(path, "central", positions)
    assert cursor.load(path) == positions
    assert path.stat().st_mode & 0o777 == 0o600
    for damaged in (
        b"{not json",
        b"[]",
        json.dumps({"version": 1, "logs": {"web": {"file": "../x", "offset": 1, "at": 0}}}).encode(),
    ):
        path.write_bytes(damaged)
        with pytest.raises(CursorProblem, match="damaged"):
            cursor.load(path)
