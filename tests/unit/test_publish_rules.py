"""``publish`` entries: parsing, clashes, source allowlists (pure logic)."""

from __future__ import annotations

import pytest

from clawpen.spec.publish import Publish, duplicate_ports, parse_publish, source_allowed
from clawpen.spec.rules import RuleViolation


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("8080:80", Publish("127.0.0.1", 8080, 80, True)),
        ("127.0.0.1:18789:18789", Publish("127.0.0.1", 18789, 18789, True)),
        ("0.0.0.0:443:8443", Publish("0.0.0.0", 443, 8443, False)),
        ("203.0.113.7:80:80", Publish("203.0.113.7", 80, 80, False)),
        ("[::1]:8080:80", Publish("::1", 8080, 80, True)),
        ("[2001:db8::1]:8080:80", Publish("2001:db8::1", 8080, 80, False)),
        (" 9000:9000 ", Publish("127.0.0.1", 9000, 9000, True)),
    ],
)
def test_parse(raw: str, want: Publish) -> None:
    assert parse_publish(raw) == want


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("80", "HOST_PORT:BOT_PORT"),
        ("1:2:3:4", "HOST_PORT:BOT_PORT"),
        ("0:80", "host port '0'"),
        ("80:65536", "bot port '65536'"),
        ("abc:80", "host port 'abc'"),
        ("localhost:80:80", "not an IP address"),
        ("[::1:80:80", "unclosed"),
        ("999.1.1.1:80:80", "not an IP address"),
    ],
)
def test_parse_refuses_with_a_reason(raw: str, needle: str) -> None:
    with pytest.raises(RuleViolation) as err:
        parse_publish(raw)
    assert needle in str(err.value)
    assert err.value.hint  # every refusal says how to fix it


def test_duplicate_ports() -> None:
    assert duplicate_ports([("a", "8080:80"), ("b", "8081:80")]) is None
    assert duplicate_ports([("a", "127.0.0.1:8080:80"), ("b", "127.0.0.2:8080:80")]) is None
    clash = duplicate_ports([("a", "8080:80"), ("b", "127.0.0.1:8080:81")])
    assert clash == "host port 8080 is published by both a and b"
    assert duplicate_ports([("a", "0.0.0.0:8080:80"), ("b", "127.0.0.1:8080:80")]) is not None


def test_source_allowed() -> None:
    assert source_allowed("198.51.100.9", ())
    assert source_allowed("203.0.113.7", ("203.0.113.0/24",))
    assert not source_allowed("198.51.100.9", ("203.0.113.0/24",))
    assert source_allowed("::ffff:203.0.113.7", ("203.0.113.7/32",))
    assert not source_allowed("2001:db8::1", ("203.0.113.7/32",))
