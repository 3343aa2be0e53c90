"""Egress rules, host normalisation, IP literal spellings and address classes (pure)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from clawpen.errors import ConfigError
from clawpen.net.hostaddr import read_once
from clawpen.spec import egress
from clawpen.spec.rules import RuleViolation


@pytest.mark.parametrize(
    ("raw", "kind", "value", "port"),
    [
        ("api.openai.com:443", "host", "api.openai.com", 443),
        ("API.OpenAI.com.:8443", "host", "api.openai.com", 8443),
        ("registry.npmjs.org", "host", "registry.npmjs.org", 443),
        ("*.telegram.org:443", "wild", "telegram.org", 443),
        ("*.example.co.uk:443", "wild", "example.co.uk", 443),
        ("bücher.de:443", "host", "xn--bcher-kva.de", 443),
        ("203.0.113.7:80", "ip", "203.0.113.7", 80),
        ("[2001:db8::7]:443", "ip", "2001:db8::7", 443),
        ("_acme.example.com:53", "host", "_acme.example.com", 53),
    ],
)
def test_good_rules(raw: str, kind: str, value: str, port: int) -> None:
    rule = egress.parse_rule(raw)
    assert (rule.kind, rule.value, rule.port) == (kind, value, port)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("*", "every host"),
        ("*:443", "every host"),
        ("*.com:443", "top-level domain"),
        ("*.co.uk:443", "public suffix"),
        ("*.github.io:443", "public suffix"),
        ("co.uk:443", "public suffix"),
        ("a..example.com:443", "empty label"),
        (".example.com:443", "empty label"),
        ("example.com:0", "out of range"),
        ("example.com:65536", "out of range"),
        ("example.com:https", "not a number"),
        ("foo.*.example.com:443", "first label"),
        ("*.*.example.com:443", "one leading"),
        ("2001:db8::1", "brackets"),
        ("0x7f.1:80", "unusual spelling"),
        ("2130706433:80", "unusual spelling"),
        ("*.10.0.0.1:443", "IP address"),
        ("open", "not a host"),
        ("", "empty"),
        ("exa mple.com:443", "invalid label"),
        ("-bad.example.com:443", "invalid label"),
    ],
)
def test_bad_rules_say_why(raw: str, why: str) -> None:
    with pytest.raises(RuleViolation) as err:
        egress.parse_rule(raw)
    assert why in str(err.value)
    assert err.value.hint


def test_spec_refuses_bad_rule_with_hint(tmp_path: Path) -> None:
    from clawpen.spec.loader import parse_spec_text

    text = '[bots.a]\ncommand = ["true"]\nnetwork = { egress = ["api.openai.com:443", "*.com:443"] }\n'
    with pytest.raises(ConfigError) as err:
        parse_spec_text(text, tmp_path / "clawpen.toml")
    assert "top-level domain" in str(err.value)
    assert err.value.hint


def test_matching() -> None:
    policy = egress.parse_rules(["api.openai.com:443", "*.telegram.org:443", "203.0.113.7:8443"])
    assert policy.allows("api.openai.com", 443)
    assert not policy.allows("api.openai.com", 80)
    assert not policy.allows("openai.com", 443)
    assert not policy.allows("xapi.openai.com", 443)
    assert policy.allows("core.telegram.org", 443)
    assert policy.allows("a.b.c.telegram.org", 443)  # any depth
    assert not policy.allows("telegram.org", 443)  # not the apex
    assert not policy.allows("eviltelegram.org", 443)
    assert not policy.allows("telegram.org.evil.com", 443)
    assert policy.allows("203.0.113.7", 8443)
    assert not policy.allows("203.0.113.8", 8443)
    assert policy.allows_name("core.telegram.org")
    assert not policy.allows_name("203.0.113.7")  # DNS never answers IP rules
    assert not policy.allows_name("secret-token.evil.example")
    assert egress.OPEN.allows("anything.example", 1234)
    assert egress.policy_for("open").open
    assert egress.policy_for(()).empty


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "017700000001",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7F.0x0.0.01",
        "127.1",
        "127.0.1",
        "127.0.0.1.",
        "::ffff:127.0.0.1",
        "[::ffff:127.0.0.1]",
        "::ffff:7f00:1",
        "[::127.0.0.1]",
    ],
)
def test_ip_literal_spellings(spelling: str) -> None:
    assert egress.parse_ip_literal(spelling) == ipaddress.ip_address("127.0.0.1")
    assert egress.normalize_host(spelling) == "127.0.0.1"
    assert (
        egress.address_problem(egress.normalize_host(spelling), host=read_once)
        == "127.0.0.1 is a loopback address"
    )


@pytest.mark.parametrize("name", ["example.com", "1e100.net", "0x.example", "127.0.0.1.nip.io", "a1.b2"])
def test_names_are_not_literals(name: str) -> None:
    assert egress.parse_ip_literal(name) is None


def test_bad_numeric_hosts_are_errors() -> None:
    for bad in ("256.1.1.1", "1.2.3.256", "4294967296", "09.1.1.1"):
        with pytest.raises(ValueError, match="IP address"):
            egress.parse_ip_literal(bad)


def test_normalize() -> None:
    assert egress.normalize_host("WWW.Example.COM.") == "www.example.com"
    assert egress.normalize_host("[2001:DB8::1]") == "2001:db8::1"
    assert egress.normalize_host("fe80::1%eth0") == "fe80::1"
    for bad in ("", ".", "a..b", "x" * 64 + ".com", "a_b c.com"):
        with pytest.raises(ValueError):
            egress.normalize_host(bad)


@pytest.mark.parametrize(
    ("addr", "word"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12::1", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "reserved"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "metadata"),
    ],
)
def test_refused_address_classes(addr: str, word: str) -> None:
    problem = egress.address_problem(addr, host=read_once)
    assert problem is not None
    assert word in problem


def test_public_addresses_pass_and_allow_private_opens_a_hole() -> None:
    for addr in ("8.8.8.8", "1.1.1.1", "2606:4700::1111", "45.79.0.2"):
        assert egress.address_problem(addr, host=read_once) is None
    allow = egress.networks(["10.5.0.0/16", "fd00:ec2::254/128"])
    assert egress.address_problem("10.5.1.1", allow, host=read_once) is None
    assert egress.address_problem("10.6.1.1", allow, host=read_once) is not None
    assert egress.address_problem("fd00:ec2::254", allow, host=read_once) is None
    assert egress.address_problem("::ffff:10.5.0.1", allow, host=read_once) is None
