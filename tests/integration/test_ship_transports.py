"""The shipping transports against the real receivers (started here, on loopback): Debian's
rsyslogd with a TLS listener and systemd-journal-remote. Every record arrives, in order, with
its structured fields; a wrong CA is refused; a receiver stopped mid-stream never leaves a record
reported as acknowledged that did not reach its file."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from logsink_env import (
    JOURNAL_REMOTE,
    RSYSLOGD,
    SERVER_NAME,
    Line,
    LogSink,
    journal_remote,
    make_pki,
    rsyslog_tls,
)
from tests.conftest import unavailable

from clawpen.logs.ship.journal import JournalRemoteTransport
from clawpen.logs.ship.model import ShipError, ShipMeta, ShipRecord, Transport
from clawpen.logs.ship.syslog import SyslogTransport

META = ShipMeta(host="bothost", release=12)


@pytest.fixture(autouse=True)
def _receivers_installed() -> None:
    for path, pkg in ((RSYSLOGD, "rsyslog rsyslog-gnutls"), (JOURNAL_REMOTE, "systemd-journal-remote")):
        if not os.access(path, os.X_OK):
            unavailable(f"needs {path} (apt-get install {pkg})")


def records(n: int, *, start: int = 0, bot: str = "web") -> list[ShipRecord]:
    """A numbered sequence; every 7th on err, some with characters that need escaping."""
    out = []
    for i in range(start, start + n):
        text = f'line {i:06d} "q" ] \\ grüße'.encode() if i % 10 == 3 else f"line {i:06d}".encode()
        out.append(
            ShipRecord(
                log=bot,
                bot=bot,
                replica=i % 2,
                stream="err" if i % 7 == 0 else "out",
                at=1_700_000_000 + i / 1000,
                text=text,
            )
        )
    return out


def expected(recs: list[ShipRecord]) -> list[Line]:
    return [
        Line(
            bot=r.bot,
            stream=r.stream,
            text=r.text.decode(),
            replica=str(r.replica),
            release="12",
            host="bothost",
        )
        for r in recs
    ]


def syslog_to(sink: LogSink, *, ca: Path | None = None, client: bool = False) -> SyslogTransport:
    assert sink.pki is not None
    return SyslogTransport(
        "127.0.0.1",
        sink.port,
        tls=True,
        ca=ca or sink.pki.ca,
        cert=sink.pki.client_cert if client else None,
        key=sink.pki.client_key if client else None,
        server_name=SERVER_NAME,
    )


def ship_all(t: Transport, recs: list[ShipRecord], batch: int = 100) -> None:
    t.open(5)
    try:
        for i in range(0, len(recs), batch):
            t.send(recs[i : i + batch], META)
            assert t.acked(10)
    finally:
        t.close()


def test_syslog_tls_1000_records_arrive_complete_and_in_order(tmp_path: Path) -> None:
    recs = records(1000)
    with rsyslog_tls(tmp_path) as sink:
        ship_all(syslog_to(sink), recs)
        got = sink.wait_lines(1000)
    assert got == expected(recs)


def test_syslog_long_line_is_cut_to_rsyslogs_default_maximum(tmp_path: Path) -> None:
    """rsyslog's default maxMessageSize (8k) takes the transport's default (8096 bytes): a long line arrives
    cut and marked, with its fields, and is not split into a second message without them."""
    long = ShipRecord(log="web", bot="web", replica=0, stream="out", at=1_700_000_000, text=b"a" * 20_000)
    recs = [long, *records(2)]
    with rsyslog_tls(tmp_path) as sink:
        ship_all(syslog_to(sink), recs)
        got = sink.wait_lines(3)
        time.sleep(0.3)
        got = sink.lines()
    assert len(got) == 3 and got[1:] == expected(recs[1:])
    assert got[0].bot == "web" and got[0].text.endswith("a [truncated from 20000 bytes]")
    assert len(got[0].text) > 7900


def test_syslog_tls_with_a_client_certificate(tmp_path: Path) -> None:
    """x509/certvalid: the client certificate of the CA gets in; without one the receiver
    refuses the connection and the transport says so (at open, not after "acknowledging")."""
    recs = records(50)
    with rsyslog_tls(tmp_path, client_auth=True) as sink:
        ship_all(syslog_to(sink, client=True), recs)
        assert sink.wait_lines(50) == expected(recs)
        t = syslog_to(sink, client=False)
        with pytest.raises(ShipError, match=r"closed|broke"):
            ship_all(t, records(10, start=50))
        time.sleep(0.5)
        assert len(sink.lines()) == 50


def test_syslog_tls_wrong_ca_or_name_is_refused(tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", name="another CA")
    with rsyslog_tls(tmp_path) as sink:
        with pytest.raises(ShipError, match="does not verify") as err:
            syslog_to(sink, ca=other.ca).open(5)
        assert err.value.hint and "ca" in err.value.hint
        assert sink.pki is not None
        wrong_name = SyslogTransport(
            "127.0.0.1", sink.port, tls=True, ca=sink.pki.ca, cert=None, key=None, server_name="other.test"
        )
        with pytest.raises(ShipError, match="does not verify"):
            wrong_name.open(5)
        ship_all(syslog_to(sink), records(3))  # positive control: the right CA and name
        assert len(sink.wait_lines(3)) == 3


def stop_mid_stream(
    sink: LogSink, t: Transport, recs: list[ShipRecord], batch: int, sig: int = signal.SIGTERM
) -> tuple[int, int]:
    """Sends batches (each followed by ``acked``) while another thread stops the receiver with
    ``sig``. Returns (records acknowledged, records sent) when the transport noticed."""
    acked = sent = 0
    t.open(5)
    stopper = threading.Timer(0.3, sink.stop, args=(sig,))
    stopper.start()
    try:
        for i in range(0, len(recs), batch):
            try:
                sent = i + batch  # attempted: part of it may arrive even when send fails
                t.send(recs[i : i + batch], META)
                if not t.acked(2):
                    break
                acked = i + batch
            except ShipError:
                break
            time.sleep(0.002)
        else:
            pytest.fail("the receiver stopped but every batch was acknowledged")
    finally:
        stopper.join()
        t.close()
    return acked, sent


def outage_then_catch_up(
    sink: LogSink, make: Callable[[], Transport], batch: int, sig: int = signal.SIGTERM
) -> None:
    recs = records(100_000)
    acked, sent = stop_mid_stream(sink, make(), recs, batch, sig)
    assert acked > 0
    arrived = sink.lines()
    print(f"{sink.name}: acknowledged {acked}, sent {sent}, arrived {len(arrived)}")
    # nothing reported acknowledged was lost: every acknowledged record is in the file, in order
    assert arrived[:acked] == expected(recs[:acked])
    assert len(arrived) <= sent
    # the receiver back on the same port: resending from the cursor fills the gap
    sink.start()
    ship_all(make(), recs[acked : acked + 500], batch)
    got = sink.wait_lines(len(arrived) + 500)
    dups = got[acked : len(arrived)]  # what arrived past the cursor before the stop
    assert dups == expected(recs[acked : len(arrived)])
    assert got[:acked] + got[len(arrived) :] == expected(recs[: acked + 500])


def test_syslog_receiver_hung_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """A receiver that hangs (SIGSTOP) mid-stream: the batches its TCP took are acknowledged,
    then one is not (its buffers are full); once it runs again, every acknowledged record is in
    its file and resending from the cursor fills the rest (duplicates only past the cursor).
    (A receiver *process that exits* drops what its TCP took but it had not read: syslog over
    TCP has no acknowledgement of its own; see syslog.py and docs/logs.md.)"""
    recs = records(100_000)
    with rsyslog_tls(tmp_path) as sink:
        t = syslog_to(sink)
        t.open(5)
        pauser = threading.Timer(0.3, sink.pause)
        pauser.start()
        acked = 0
        try:
            for i in range(0, len(recs), 50):
                try:
                    t.send(recs[i : i + 50], META)
                    if not t.acked(2):
                        break
                    acked = i + 50
                except ShipError:
                    break
            else:
                pytest.fail("the receiver hung but every batch was acknowledged")
        finally:
            pauser.join()
            with contextlib.suppress(ShipError, OSError):
                t.close()
        assert acked > 0
        sink.resume()
        ship_all(syslog_to(sink), recs[acked : acked + 500], 50)
        got = sink.wait_lines(acked + 500)
    once = list(dict.fromkeys(got))  # duplicates (sent, not acknowledged, resent) removed
    assert once[: acked + 500] == expected(recs[: acked + 500])


def test_journal_remote_1000_records_arrive_complete_and_in_order(tmp_path: Path) -> None:
    recs = records(1000)
    recs.append(
        ShipRecord(
            log="web", bot="web", replica=0, stream="out", at=1_700_000_999, text=b"two\nlines and \xff"
        )
    )
    recs.append(ShipRecord(log="web", bot="web", replica=0, stream="out", at=0.0, text=b"no time"))
    with journal_remote(tmp_path) as sink:
        ship_all(JournalRemoteTransport(sink.url, ca=None, cert=None, key=None), recs)
        got = sink.wait_lines(1002)
    assert got[:1000] == expected(recs[:1000])
    assert got[1000].text == "two\nlines and \ufffd"  # binary-safe: the bytes arrived as they are
    assert got[1001].text == "no time"  # a time of 0 would abort the upload


def test_journal_remote_https_wrong_ca_is_refused(tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", name="another CA")
    with journal_remote(tmp_path, https=True) as sink:
        assert sink.pki is not None
        wrong = JournalRemoteTransport(sink.url, ca=other.ca, cert=None, key=None)
        with pytest.raises(ShipError, match="CERTIFICATE_VERIFY_FAILED"):
            ship_all(wrong, records(3))
        right = JournalRemoteTransport(
            sink.url, ca=sink.pki.ca, cert=sink.pki.client_cert, key=sink.pki.client_key
        )
        ship_all(right, records(3))  # positive control
        assert sink.wait_lines(3) == expected(records(3))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_journal_remote_stopped_mid_stream_loses_nothing_acknowledged(tmp_path: Path, sig: int) -> None:
    """journal-remote writes each entry (mmap) before it answers: even SIGKILL loses nothing
    acknowledged. (rsyslog is only stopped: SIGKILL can lose what its TCP took but it had not
    written; see syslog.py.)"""
    with journal_remote(tmp_path) as sink:
        make = lambda: JournalRemoteTransport(sink.url, ca=None, cert=None, key=None)  # noqa: E731
        outage_then_catch_up(sink, make, 200, sig)
