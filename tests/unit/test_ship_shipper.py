"""The shipper's logic with an in-memory transport: batches, acknowledgements and the cursor,
resending after a failure (duplicates counted), the backlog cap, a damaged cursor file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.unit.test_ship_cursor import BASE, append, numbers, record, rotate

from clawpen.logs.ship import cursor
from clawpen.logs.ship.model import ShipError, ShipMeta, ShipRecord
from clawpen.logs.ship.shipper import Shipper, bot_of, marker_text
from clawpen.spec.logship import ShipSettings, ShipTarget


class MemoryTransport:
    """Keeps what it was sent; ``fail_send``/``fail_ack`` make the next call fail."""

    name = "memory"

    def __init__(self) -> None:
        self.received: list[ShipRecord] = []
        self.pending: list[ShipRecord] = []
        self.fail_send = False
        self.fail_ack = False
        self.opened = 0

    def open(self, timeout: float) -> None:
        self.opened += 1

    def send(self, records: Sequence[ShipRecord], meta: ShipMeta) -> None:
        if self.fail_send:
            raise ShipError("connection refused")
        self.pending = list(records)

    def acked(self, timeout: float) -> bool:
        if self.fail_ack:
            return False
        self.received += self.pending
        self.pending = []
        return True

    def close(self) -> None:
        self.pending = []


def make(
    tmp_path: Path, transport: MemoryTransport, **settings: object
) -> tuple[Shipper, list[tuple[str, str]]]:
    notes: list[tuple[str, str]] = []
    target = ShipTarget(name="central", type="syslog", url="tcp://127.0.0.1:1")
    shipper = Shipper(
        target,
        ShipSettings(**settings),  # type: ignore[arg-type]
        logs_dir=tmp_path / "logs",
        state=tmp_path,
        meta=lambda: ShipMeta("host", 3),
        note=lambda kind, text: notes.append((kind, text)),
        transport=lambda _t: transport,
    )
    (tmp_path / "logs").mkdir(exist_ok=True)
    shipper._load()
    shipper._open()
    return shipper, notes


def drain(shipper: Shipper) -> None:
    while shipper._pass():
        pass


def test_batches_move_the_cursor_only_after_ack(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs, 0, 1200)
    transport = MemoryTransport()
    shipper, _ = make(tmp_path, transport, batch=500)
    assert shipper._pass()
    assert len(transport.received) == 500
    saved = cursor.load(cursor.cursor_path(tmp_path, "central"))["web"]
    assert saved.offset == sum(len(record(n)) for n in range(500))
    drain(shipper)
    assert numbers([r.text for r in transport.received]) == list(range(1200))
    assert {(r.bot, r.replica, r.stream) for r in transport.received} == {("web", 0, "out")}
    assert shipper.status.acked == shipper.status.sent == 1200
    assert shipper.status.duplicates == 0
    shipper._update_lag()
    assert shipper.status.lag_seconds == 0 and shipper.status.lag_bytes == 0


def test_failure_resends_from_the_cursor_and_counts_duplicates(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs, 0, 100)
    transport = MemoryTransport()
    shipper, notes = make(tmp_path, transport, batch=40)
    assert shipper._pass()
    transport.fail_ack = True  # sent, never acknowledged (the receiver went away)
    with pytest.raises(ShipError):
        shipper._pass()
    shipper._failed(ShipError("gone"))
    assert shipper.status.duplicates == 40 and not shipper.status.connected
    assert notes and notes[0][0] == "ship-error"
    transport.fail_ack = False
    shipper._open()
    drain(shipper)
    assert numbers([r.text for r in transport.received]) == list(range(100))  # in order, none lost
    assert [k for k, _ in notes] == ["ship-error", "ship-ok"]  # one event per outage, and its end
    # a new shipper (a daemon restart) resumes after the last acknowledged record
    append(logs, 100, 110)
    again = MemoryTransport()
    restarted, _ = make(tmp_path, again)
    drain(restarted)
    assert numbers([r.text for r in again.received]) == list(range(100, 110))


def test_backlog_over_cap_drops_the_oldest_with_a_marker(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs, 0, 1000)
    rotate(logs, BASE + 2, gz=True)
    append(logs, 1000, 2000)
    total = sum(len(record(n)) for n in range(2000))
    cap = sum(len(record(n)) for n in range(1500, 2000))  # room for the newest 500 lines
    transport = MemoryTransport()
    shipper, notes = make(tmp_path, transport, backlog=cap)
    assert total > cap
    drain(shipper)
    got = transport.received
    assert got[0].stream == "err" and got[0].text == marker_text(1500)
    assert numbers([r.text for r in got[1:]]) == list(range(1500, 2000))
    assert shipper.status.dropped == 1500
    assert [k for k, _ in notes] == ["ship-dropped"]
    assert "1500 lines of web not shipped" in notes[0][1]


def test_damaged_cursor_is_an_event_and_shipping_starts_over(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs, 0, 20)
    path = cursor.cursor_path(tmp_path, "central")
    path.parent.mkdir()
    path.write_text("{torn")
    transport = MemoryTransport()
    shipper, notes = make(tmp_path, transport)
    assert notes[0][0] == "ship-cursor" and "damaged" in notes[0][1]
    assert path.with_name("central.json.damaged").exists()
    drain(shipper)
    assert numbers([r.text for r in transport.received]) == list(range(20))
    assert shipper.status.duplicates == 20  # every record older than the damaged cursor file


def test_bot_of_replicas() -> None:
    assert bot_of("web", frozenset({"web"})) == ("web", 0)
    assert bot_of("web-r2", frozenset({"web"})) == ("web", 2)
    assert bot_of("web-r2", frozenset({"web-r2"})) == ("web-r2", 0)
    assert bot_of("web-r2", None) == ("web", 2)


def test_a_killed_daemons_unacknowledged_batch_is_counted_when_sent_again(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs, 0, 100)
    transport = MemoryTransport()
    shipper, _ = make(tmp_path, transport, batch=30)
    assert shipper._pass()
    transport.fail_ack = True
    with pytest.raises(ShipError):
        shipper._pass()  # records 30..59 sent; the daemon is "killed" before their acknowledgement
    again = MemoryTransport()
    restarted, _ = make(tmp_path, again, batch=30)
    drain(restarted)
    assert numbers([r.text for r in again.received]) == list(range(30, 100))
    assert restarted.status.duplicates == 30
    assert cursor.load_all(cursor.cursor_path(tmp_path, "central")).sending == {}


def test_backlog_is_capped_during_an_outage_and_the_marker_survives_a_restart(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs, 0, 1000)
    cap = sum(len(record(n)) for n in range(900, 1000))
    transport = MemoryTransport()
    shipper, notes = make(tmp_path, transport, backlog=cap)
    shipper._failed(ShipError("connection refused"))  # the receiver is away
    shipper._wait(0)
    assert shipper.status.dropped == 900 and [k for k, _ in notes] == ["ship-error", "ship-dropped"]
    assert shipper.status.lag_bytes == cap
    saved = cursor.load_all(cursor.cursor_path(tmp_path, "central"))
    assert saved.dropped == {"web": 900}
    again = MemoryTransport()
    restarted, _ = make(tmp_path, again, backlog=cap)  # a daemon restart before the receiver is back
    drain(restarted)
    assert again.received[0].text == marker_text(900) and again.received[0].stream == "err"
    assert numbers([r.text for r in again.received[1:]]) == list(range(900, 1000))
    assert cursor.load_all(cursor.cursor_path(tmp_path, "central")).dropped == {}


def test_logs_take_turns_and_keep_their_own_order(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs, 0, 300, log="aa")
    append(logs, 0, 300, log="bb-r1")
    transport = MemoryTransport()
    shipper, _ = make(tmp_path, transport, batch=100)
    assert shipper._pass() and shipper._pass()
    assert {r.log for r in transport.received} == {"aa", "bb-r1"}  # the second log was not held back
    drain(shipper)
    for log, bot, replica in (("aa", "aa", 0), ("bb-r1", "bb", 1)):
        mine = [r for r in transport.received if r.log == log]
        assert numbers([r.text for r in mine]) == list(range(300))
        assert {(r.bot, r.replica) for r in mine} == {(bot, replica)}
