"""Unit tests of the host firewall's pure parts: ``[host.firewall]`` validation, render, diff.

The real loads (nft in a network namespace) are in tests/integration/test_firewall_netns.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clawpen import cli
from clawpen.errors import ConfigError, UsageError
from clawpen.net import firewall
from clawpen.net.firewall_render import counters, diff, load_script, normalise, render, rules
from clawpen.spec.host import Firewall
from clawpen.spec.loader import parse_spec_text


def fw(text: str) -> Firewall:
    loaded = parse_spec_text("[host.firewall]\n" + text, Path("/x/clawpen.toml"))
    assert loaded.spec.host.firewall is not None
    return loaded.spec.host.firewall


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_spec_text("[host.firewall]\n" + text, Path("/x/clawpen.toml"))
    return err.value


BASIC = 'ssh_from = ["203.0.113.7/32"]\nallow_tcp = [8080]\n'


def test_no_host_firewall_by_default() -> None:
    assert parse_spec_text("", Path("/x/clawpen.toml")).spec.host.firewall is None


def test_render_basic_policy_in_order() -> None:
    got = rules(fw(BASIC))
    assert got == [
        'iif "lo" accept comment "loopback"',
        'ct state established,related accept comment "replies to connections of this host"',
        'ct state invalid drop comment "invalid packets"',
        "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, "
        'nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept comment "IPv6 errors and '
        'neighbour discovery"',
        'ip6 saddr fe80::/10 udp dport 546 accept comment "DHCPv6 client"',
        'tcp dport 22 ip saddr 203.0.113.7 counter accept comment "ssh from ssh_from"',
        'tcp dport 8080 counter accept comment "allow_tcp 8080"',
        'counter drop comment "other inbound: dropped"',
    ]
    text = render(fw(BASIC))
    assert text.startswith("table inet clawpen_host {\n\tchain input {\n")
    assert "\t\ttype filter hook input priority filter; policy drop;\n" in text
    assert "echo-request" not in text  # ping dropped by default
    assert "output" not in text  # outbound allowed: no output chain at all


def test_render_sources_sorted_merged_and_split_by_family() -> None:
    text = render(
        fw(
            'ssh_from = ["203.0.113.7", "10.1.0.0/16", "10.0.0.0/8", "2001:db8::1/128", "2001:db8:1::/48", '
            '"192.0.2.0/25", "192.0.2.128/25"]\n'
        )
    )
    assert "tcp dport 22 ip saddr { 10.0.0.0/8, 192.0.2.0/24, 203.0.113.7 } counter accept" in text
    assert "tcp dport 22 ip6 saddr { 2001:db8::1, 2001:db8:1::/48 } counter accept" in text


def test_render_allow_rules_ports_ranges_and_sources() -> None:
    text = render(
        fw(
            BASIC + 'allow = [{port = "5000-5010", proto = "udp", from = ["192.0.2.0/24", "2001:db8::/32"], '
            'name = "metrics"}, {port = 443}]\nssh_port = 2222\n'
        )
    )
    assert 'udp dport 5000-5010 ip saddr 192.0.2.0/24 counter accept comment "metrics"' in text
    assert 'udp dport 5000-5010 ip6 saddr 2001:db8::/32 counter accept comment "metrics"' in text
    assert 'tcp dport 443 counter accept comment "allow 443/tcp"' in text
    assert "tcp dport 2222 ip saddr 203.0.113.7" in text


def test_render_icmp_echo_and_reject_and_no_ssh() -> None:
    text = render(fw('ssh = false\nicmp_echo = true\ninbound = "reject"\nallow_tcp = [80]\n'))
    assert "dport 22" not in text
    assert 'icmp type echo-request counter accept comment "icmp_echo"' in text
    assert 'icmpv6 type echo-request counter accept comment "icmp_echo"' in text
    assert "meta l4proto tcp counter reject with tcp reset" in text
    assert "counter reject with icmpx admin-prohibited" in text
    assert "counter drop" not in text


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("allow_tcp = [8080]\nssh_from = []\n", "lock the admin out", 3),
        ("allow_tcp = [8080]\n", "lock the admin out", 1),
        ('ssh_from = ["203.0.113.7/24"]\n', "host bits set", 2),
        ('ssh_from = ["203.0.113.300"]\n', "not an address or network", 2),
        ('ssh_from = ["0.0.0.0/0"]\n', "every address", 2),
        ('ssh_from = ["::ffff:10.0.0.0/104"]\n', "IPv4-mapped", 2),
        ('ssh = false\nssh_from = ["10.0.0.1"]\n', "no effect", 3),
        ('ssh_from = ["10.0.0.1"]\nallow_tcp = [22]\n', "bypassing ssh_from", 3),
        ('ssh_from = ["10.0.0.1"]\nallow_tcp = [70000]\n', "out of range", 3),
        ('ssh_from = ["10.0.0.1"]\nssh_port = 0\n', "out of range", 3),
        ('ssh_from = ["10.0.0.1"]\nallow = [{port = "20-30"}]\n', "covers the SSH port 22", 3),
        ('ssh_from = ["10.0.0.1"]\nallow = [{port = "30-20", proto = "udp"}]\n', "runs backwards", 3),
        ('ssh_from = ["10.0.0.1"]\nallow = [{port = "http"}]\n', "not a port", 3),
        ('ssh_from = ["10.0.0.1"]\nallow = [{port = 80, proto = "icmp"}]\n', "tcp", 3),
        ('ssh_from = ["10.0.0.1"]\nallow = [{port = 80, name = "a\\"b"}]\n', "short label", 3),
        ('ssh_from = ["10.0.0.1"]\noutbound = "deny"\n', "allow", 3),
        ('ssh_from = ["10.0.0.1"]\nsshport = 22\n', "Extra inputs", 3),
    ],
)
def test_invalid_configs_say_what_and_where(text: str, message: str, line: int) -> None:
    err = refused(text)
    assert message in err.what
    assert err.where is not None and err.where.startswith(f"/x/clawpen.toml:{line} ")
    assert err.hint


def test_host_bits_hint_gives_the_fix() -> None:
    err = refused('ssh_from = ["203.0.113.7/24"]\n')
    assert err.hint is not None and '"203.0.113.0/24"' in err.hint and '"203.0.113.7"' in err.hint


def test_ssh_from_default_is_validated_and_ssh_false_needs_none() -> None:
    assert fw("ssh = false\n").ssh_from == []


def _as_listed(table: str) -> str:
    """What nft prints for a loaded table: counters with values, handles with -a, 8-space indents."""
    out = re.sub(r"\bcounter\b", "counter packets 12 bytes 3456", table)
    lines = [
        line.replace("\t", "    ") + (f" # handle {n}" if "accept" in line else "")
        for n, line in enumerate(out.splitlines())
    ]
    return "\n".join(lines) + "\n\n"


def test_diff_ignores_counters_handles_and_layout() -> None:
    table = render(fw(BASIC))
    same = diff(_as_listed(table), table)
    assert not same.changed and same.text == "" and same.live_present
    other = render(fw(BASIC.replace("8080", "8443")))
    changed = diff(table, other)
    assert changed.changed
    assert '-\t\ttcp dport 8080 counter accept comment "allow_tcp 8080"' in changed.text.splitlines()
    assert '+\t\ttcp dport 8443 counter accept comment "allow_tcp 8443"' in changed.text.splitlines()


def test_diff_from_absent_and_to_absent() -> None:
    table = render(fw(BASIC))
    new = diff(None, table)
    assert new.changed and not new.live_present and "(absent)" in new.text.splitlines()[0]
    assert all(line.startswith("+") for line in new.text.splitlines()[3:])
    gone = diff(table, None)
    assert gone.changed and "(absent)" in gone.text.splitlines()[1]
    assert not diff(None, None).changed


def test_normalise_reindents_by_braces() -> None:
    assert normalise(
        "table inet t {\n  chain c {\n   counter packets 3 bytes 9 drop # handle 4\n  }\n}\n"
    ) == [
        "table inet t {",
        "\tchain c {",
        "\t\tcounter drop",
        "\t}",
        "}",
    ]
    assert normalise(None) == []


def test_load_script_is_one_idempotent_transaction_for_our_table_only() -> None:
    table = render(fw(BASIC))
    script = load_script(table)
    assert script.startswith(
        "table inet clawpen_host {}\ndelete table inet clawpen_host\ntable inet clawpen_host {"
    )
    assert load_script(None) == "table inet clawpen_host {}\ndelete table inet clawpen_host\n"
    assert "flush ruleset" not in script and script.count("delete") == 1


def test_counters_parse_listing() -> None:
    listed = _as_listed(render(fw(BASIC)))
    got = counters(listed)
    assert [c["comment"] for c in got] == ["ssh from ssh_from", "allow_tcp 8080", "other inbound: dropped"]
    assert all(c["packets"] == 12 and c["bytes"] == 3456 for c in got)


def test_store_pending_and_saved(tmp_path: Path) -> None:
    store = firewall.Store(tmp_path)
    assert store.saved("previous.nft") == (False, None)
    store.save("previous.nft", None)
    assert store.saved("previous.nft") == (True, None)
    store.save("previous.nft", "table inet clawpen_host {\n}\n")
    assert store.saved("previous.nft") == (True, "table inet clawpen_host {\n}\n")
    assert (tmp_path / "firewall" / "previous.nft").stat().st_mode & 0o777 == 0o600
    store.set_pending({"token": "t", "pid": 2**22 + 12345, "deadline": 1.0, "who": "me"})
    assert store.pending() == {"token": "t", "pid": 2**22 + 12345, "deadline": 1.0, "who": "me"}
    assert store.clear_pending() is not None  # a pid that is not our watcher is never signalled
    assert store.pending() is None


def test_confirm_without_pending_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no apply waiting"):
        firewall.confirm(tmp_path, who="test")


def test_rollback_without_saved_table_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no saved previous"):
        firewall.rollback(tmp_path, who="test")


def test_cli_refuses_non_root_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "clawpen.toml").write_text("[host.firewall]\n" + BASIC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(firewall.os, "geteuid", lambda: 1000)
    assert cli.main(["firewall", "plan"]) == 1
    err = capsys.readouterr().err
    assert "needs root" in err and "hint: run it as root" in err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["apply", "--no-confirm", "--confirm-within", "5"], "contradict"),
        (["apply", "--confirm-within", "0"], "out of range"),
        (["apply", "-f", "missing.toml"], "does not exist"),
        (["plan", "-f", "empty.toml"], "no [host.firewall]"),
    ],
)
def test_cli_usage_errors_exit_2(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "clawpen.toml").write_text("[host.firewall]\n" + BASIC)
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path / "state"))
    assert cli.main(["firewall", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "state").exists()
