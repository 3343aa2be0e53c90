"""The shipping formats: RFC 5424 syslog messages in octet-counted framing, and the journal
export format of systemd-journal-remote's upload (binary-safe fields included)."""

from __future__ import annotations

import re
import socket
import struct
import threading
from pathlib import Path

import pytest

from clawpen.errors import ConfigError
from clawpen.logs.ship.journal import JournalRemoteTransport, export_batch, export_entry, export_field
from clawpen.logs.ship.model import ShipError, ShipMeta, ShipRecord
from clawpen.logs.ship.syslog import (
    Formatter,
    SyslogTransport,
    format_message,
    frame,
    pri,
    sd_escape,
    structured_data,
    timestamp,
)

AT = 1_700_000_000.123456  # 2023-11-14T22:13:20.123456Z
META = ShipMeta(host="bothost", release=12)


def rec(text: bytes = b"hello", *, stream: str = "out", bot: str = "web", replica: int = 0) -> ShipRecord:
    return ShipRecord(
        log=bot if replica == 0 else f"{bot}-r{replica}",
        bot=bot,
        replica=replica,
        stream=stream,
        at=AT,
        text=text,
    )


def test_message_has_every_rfc5424_field() -> None:
    msg = format_message(rec(), META)
    assert msg == (
        b"<14>1 2023-11-14T22:13:20.123456Z bothost clawpen - out "
        b'[clawpen@32473 bot="web" replica="0" stream="out" release="12" host="bothost"] hello'
    )
    # RFC 5424's ABNF for the header, checked field by field
    head = re.compile(
        rb"^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) ([!-~]{1,255}) ([!-~]{1,48}) "
        rb"(-|[!-~]{1,128}) ([!-~]{1,32}) \["
    )
    m = head.match(msg)
    assert m is not None and m.group(1) == b"14"


def test_pri_is_facility_user_and_severity_of_the_stream() -> None:
    assert pri("out") == 1 * 8 + 6
    assert pri("err") == 1 * 8 + 3
    assert pri("other") == 1 * 8 + 5
    assert format_message(rec(stream="err"), META).startswith(b"<11>1 ")


def test_timestamp_is_utc_with_microseconds() -> None:
    assert timestamp(0.5) == "1970-01-01T00:00:00.500000Z"
    assert timestamp(AT) == "2023-11-14T22:13:20.123456Z"


def test_timestamp_rounds_into_the_next_second() -> None:
    assert timestamp(0.9999996) == "1970-01-01T00:00:01.000000Z"


def test_formatter_remembers_without_mixing_records() -> None:
    """The cached header parts give the same bytes as formatting each record alone."""
    f = Formatter()
    metas = [META, ShipMeta(host="other", release=None)]
    recs = [
        ShipRecord(log="a", bot=bot, replica=r, stream=st, at=AT + dt, text=b"t")
        for bot in ("web", "api")
        for r in (0, 1)
        for st in ("out", "err")
        for dt in (0.0, 0.9999996, 1.5, 86400.25)
    ]
    for meta in metas:
        for r in recs:
            assert f.message(r, meta) == format_message(r, meta)
    assert f.message(recs[1], META).split(b" ")[1] == b"2023-11-14T22:13:21.123456Z"


def test_sd_values_escape_quote_backslash_and_bracket() -> None:
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    sd = structured_data(rec(bot='we"b]'), ShipMeta(host="h\\1", release=None))
    assert sd == '[clawpen@32473 bot="we\\"b\\]" replica="0" stream="out" host="h\\\\1"]'
    # positive control: the escaped SD parses back to the original values
    values = re.findall(r'="((?:[^"\\]|\\.)*)"', sd)
    assert [re.sub(r"\\(.)", r"\1", v) for v in values] == ['we"b]', "0", "out", "h\\1"]


def test_release_is_left_out_when_unknown() -> None:
    msg = format_message(rec(), ShipMeta(host="h", release=None))
    assert b"release=" not in msg and b'host="h"' in msg


def test_header_fields_stay_printable_ascii() -> None:
    msg = format_message(rec(), ShipMeta(host="bad host\u00e9", release=1), app_name="")
    assert msg.split(b" ")[2:4] == [b"bad-host-", b"-"]


def test_text_is_utf8_and_invalid_bytes_become_replacement_characters() -> None:
    msg = format_message(rec("grüße \u2603".encode() + b" \xff\xfe end"), META)
    assert msg.endswith(" grüße \u2603 \ufffd\ufffd end".encode())
    assert not msg.split(b"] ", 1)[1].startswith(b"\xef\xbb\xbf")  # no BOM
    msg.decode("utf-8")  # always valid


def test_empty_text_has_no_trailing_space() -> None:
    assert format_message(rec(b""), META).endswith(b'host="bothost"]')


def test_a_long_text_is_cut_to_the_maximum_at_a_character_boundary() -> None:
    text = "é".encode() * 10_000  # 20,000 bytes
    msg = format_message(rec(text), META, max_size=8192)
    assert len(msg) <= 8192 and msg.endswith(b" [truncated from 20000 bytes]")
    msg.decode("utf-8")  # not cut inside a character
    assert len(msg) >= 8192 - 1
    fits = b"x" * (8192 - len(format_message(rec(b""), META)) - 1)
    assert format_message(rec(fits), META, max_size=8192).endswith(fits)  # exactly the maximum: kept


def test_octet_counting_counts_bytes_not_characters() -> None:
    body = format_message(rec("é\nnewline".encode()), META)
    framed = frame(body)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(body) == len(rest) and rest == body
    assert frame(b"abc") == b"3 abc"


def test_transport_sends_one_frame_per_record_over_tcp_and_acks() -> None:
    """A loopback TCP peer (unit: the format on the wire; rsyslog itself is in the integration
    tests) reads back every frame; acked is true once the peer's TCP has the bytes."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                got.extend(chunk)

    th = threading.Thread(target=serve)
    th.start()
    t = SyslogTransport("127.0.0.1", port, tls=False, ca=None, cert=None, key=None, server_name=None)
    try:
        t.open(5)
        records = [rec(b"line %d" % i) for i in range(100)]
        t.send(records, META)
        assert t.acked(5)
    finally:
        t.close()
        th.join(5)
        server.close()
    frames = []
    data = bytes(got)
    while data:
        length, _, data = data.partition(b" ")
        frames.append(data[: int(length)])
        data = data[int(length) :]
    assert frames == [format_message(r, META) for r in records]


def test_transport_reports_a_peer_that_closed() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    t = SyslogTransport("127.0.0.1", port, tls=False, ca=None, cert=None, key=None, server_name=None)
    try:
        t.open(5)
        conn, _ = server.accept()
        conn.close()
        with pytest.raises(ShipError, match=r"closed|broke|send"):
            for _ in range(50):  # the FIN (then the RST) arrives; send or acked notices
                t.send([rec()], META)
                t.acked(0.05)
    finally:
        t.close()
        server.close()


def test_refused_connection_is_a_ship_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = SyslogTransport("127.0.0.1", port, tls=True, ca=None, cert=None, key=None, server_name=None)
    with pytest.raises(ShipError, match="cannot connect"):
        t.open(2)


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs its key"):
        SyslogTransport("h", 1, tls=True, ca=None, cert=tmp_path / "c", key=None, server_name=None)
    with pytest.raises(ConfigError, match="needs its key"):
        JournalRemoteTransport("https://h", ca=None, cert=None, key=tmp_path / "k")


def test_missing_ca_file_is_a_ship_error_with_a_hint(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        t = SyslogTransport(
            "127.0.0.1",
            server.getsockname()[1],
            tls=True,
            ca=tmp_path / "nope.pem",
            cert=None,
            key=None,
            server_name=None,
        )
        with pytest.raises(ShipError) as err:
            t.open(2)
        assert err.value.hint and "ca" in err.value.hint
    finally:
        server.close()


# journal export format


def test_export_entry_has_the_fields_in_text_form() -> None:
    entry = export_entry(rec(b"hello world", stream="err", replica=2), META)
    assert entry == (
        b"__REALTIME_TIMESTAMP=1700000000123456\n_HOSTNAME=bothost\nSYSLOG_IDENTIFIER=clawpen\n"
        b"PRIORITY=3\nCLAWPEN_LOG=web-r2\nCLAWPEN_BOT=web\nCLAWPEN_REPLICA=2\nCLAWPEN_STREAM=err\n"
        b"CLAWPEN_RELEASE=12\nMESSAGE=hello world\n\n"
    )


def test_export_time_is_never_zero() -> None:
    """journal-remote refuses a time of 0 and aborts the upload (seen with systemd 252)."""
    zero = ShipRecord(log="web", bot="web", replica=0, stream="out", at=0.0, text=b"x")
    assert export_entry(zero, META).startswith(b"__REALTIME_TIMESTAMP=1\n")


def test_export_uses_the_binary_safe_form_for_newlines_and_invalid_utf8() -> None:
    assert export_field("MESSAGE", b"a\nb") == b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\n"
    assert export_field("MESSAGE", b"\xff") == b"MESSAGE\n\x01\x00\x00\x00\x00\x00\x00\x00\xff\n"
    assert export_field("MESSAGE", "ü=x".encode()) == "MESSAGE=ü=x\n".encode()  # positive control


def test_export_batch_separates_entries_with_a_blank_line() -> None:
    batch = export_batch([rec(b"one"), rec(b"two"), rec(b"x\ny")], ShipMeta(host="h", release=None))
    assert batch.count(b"\n\n") == 3 and b"CLAWPEN_RELEASE" not in batch
    assert batch.endswith(b"MESSAGE\n" + struct.pack("<Q", 3) + b"x\ny\n\n")


def test_journal_url_must_be_http_without_credentials() -> None:
    with pytest.raises(ConfigError, match="http"):
        JournalRemoteTransport("ftp://h", ca=None, cert=None, key=None)
    with pytest.raises(ConfigError, match="credentials") as err:
        JournalRemoteTransport("https://user:s3cret@h:19532", ca=None, cert=None, key=None)
    assert "s3cret" not in str(err.value)
    JournalRemoteTransport("https://h:19532/path@x", ca=None, cert=None, key=None)  # positive control
