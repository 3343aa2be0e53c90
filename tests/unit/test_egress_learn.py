"""``egress = "learn"``: the spec, the persisted start of the period, the policy over time, and
``clawpen net suggest`` (the allowlist from the connection log)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from clawpen import cli
from clawpen.errors import ConfigError
from clawpen.net.component import GatewayComponent, log_path
from clawpen.net.connlog import ConnLog, reached
from clawpen.net.connrecord import ConnRecord
from clawpen.net.learn import LearnStarts, PolicyView
from clawpen.net.ops import NetSuggestRequest
from clawpen.net.suggest import render_toml, suggest
from clawpen.net.types import BotLink
from clawpen.spec import egress
from clawpen.spec.loader import parse_spec_text
from clawpen.spec.models import Network


def _bot(network: str, tmp: Path) -> Network:
    text = f'[bots.a]\ncommand = ["true"]\nnetwork = {{ {network} }}\n'
    return parse_spec_text(text, tmp / "clawpen.toml").spec.bots["a"].network


def test_learn_in_the_spec(tmp_path: Path) -> None:
    default = _bot('egress = "learn"', tmp_path)
    assert default.policy_egress() == "learn:86400"
    assert _bot('egress = "learn", learn_for = "2h"', tmp_path).policy_egress() == "learn:7200"
    assert _bot('egress = "learn", learn_for = "1m"', tmp_path).policy_egress() == "learn:60"
    assert _bot('egress = "learn", learn_for = "30d"', tmp_path).policy_egress() == "learn:2.592e+06"
    assert not default.isolated  # it needs its gateway link
    # Bots not in learn mode store what they stored before (their policy hash stays the same).
    assert "learn_for" not in _bot('egress = ["a.example.com:443"]', tmp_path).model_dump()
    assert _bot('egress = "open"', tmp_path).policy_egress() == "open"


@pytest.mark.parametrize(
    ("network", "why"),
    [
        ('egress = "learn", learn_for = "30s"', "out of range (1 minute to 30 days)"),
        ('egress = "learn", learn_for = "31d"', "out of range (1 minute to 30 days)"),
        ('egress = "open", learn_for = "1h"', 'egress is not "learn"'),
        ('egress = ["a.example.com:443"], learn_for = "1h"', 'egress is not "learn"'),
        ('egress = "learn", learn_for = "soon"', "learn_for"),
        ('egress = "learning"', "egress"),
        ('egress = ["learn"]', "egress rule 'learn'"),
    ],
)
def test_bad_learn_specs_say_why(network: str, why: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _bot(network, tmp_path)
    assert why in str(err.value)
    assert err.value.exit_code == 2


def test_a_learn_value_without_its_end_allows_nothing() -> None:
    assert egress.policy_for("learn:86400").empty
    assert egress.policy_for("learn").empty
    assert egress.policy_for("learn-until:junk").empty
    policy = egress.policy_for("learn-until:1000.000")
    assert policy.open and policy.until == 1000.0
    assert egress.at(policy, 999.0) is policy
    assert egress.at(policy, 1000.0).empty and not egress.at(policy, 1000.0).allows("a.example.com", 443)


def test_the_start_survives_a_restart_and_a_policy_change_restarts_it(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "net-learn.json"
    starts = LearnStarts(path, clock=lambda: now[0])
    assert starts.link_egress("a", "learn:60") == "learn-until:1060.000"
    now[0] = 1030.0  # a restart of the bot, or of the daemon: the period keeps its start
    assert starts.link_egress("a", "learn:60") == "learn-until:1060.000"
    again = LearnStarts(path, clock=lambda: now[0])  # a new daemon reads the state
    assert again.start_of("a") == 1000.0
    assert again.link_egress("a", "learn:120") == "learn-until:1120.000"  # learn_for changed
    assert again.link_egress("a", ("x.example.com:443",)) == ("x.example.com:443",)
    assert again.start_of("a") is None and LearnStarts(path).start_of("a") is None
    now[0] = 5000.0  # back to learn: a new period from now
    assert again.link_egress("a", "learn:60") == "learn-until:5060.000"
    assert again.link_egress("b", "open") == "open"  # other bots untouched
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_policy_view_ends_learn_mode_once() -> None:
    now = [0.0]
    ended: list[str] = []
    view = PolicyView(clock=lambda: now[0], on_ended=lambda link: ended.append(link.bot))
    link = BotLink("a", 0, "10.0.0.2", "10.0.0.1", "learn-until:100.000")
    other = BotLink("b", 0, "10.0.0.6", "10.0.0.5", "open")
    assert view(link).open and view.allowed_by(view(link)) == "learn"
    assert view(other).open and view.allowed_by(view(other)) == "open"
    now[0] = 100.0
    assert view(link).empty and view(link).empty
    assert view(other).open  # "open" never ends
    assert ended == ["a"]


ROWS = [
    ("api.openai.com", 443, "allowed", 5),
    ("API.OpenAI.com.", 443, "allowed", 2),  # the same host in another spelling
    ("api.openai.com", 80, "denied", 1),
    ("clawhub.ai", 443, "denied", 3),
    ("clawhub.ai", 0, "denied", 4),  # DNS queries of a name also seen with a port: folded away
    ("only-dns.example.org", 0, "denied", 2),
    ("203.0.113.7", 8443, "allowed", 1),
    ("2001:db8::7", 443, "allowed", 1),
    ("-", 0, "denied", 9),  # not a host
    *((f"s{i}.telegram.org", 443, "allowed", 1) for i in range(4)),
    *((f"s{i}.three.example.net", 443, "allowed", 1) for i in range(3)),
    *((f"s{i}.example.co.uk", 443, "allowed", 1) for i in range(5)),
    *((f"x{i}.github.io", 443, "allowed", 1) for i in range(5)),  # a public suffix: no wildcard
]


def test_suggest_dedupes_sorts_and_wildcards_only_many_subdomains() -> None:
    got = {s.rule: s for s in suggest(ROWS)}
    assert got["api.openai.com:443"].count == 7
    assert got["api.openai.com:80"].denied == 1
    assert got["clawhub.ai:443"].count == 3 and not got["clawhub.ai:443"].dns_only
    assert got["only-dns.example.org:443"].dns_only and got["only-dns.example.org:443"].count == 2
    assert "203.0.113.7:8443" in got and "[2001:db8::7]:443" in got
    assert got["*.telegram.org:443"].hosts == tuple(f"s{i}.telegram.org" for i in range(4))
    assert not any("telegram.org" in r for r in got if not r.startswith("*"))
    assert "*.three.example.net:443" not in got and "s0.three.example.net:443" in got  # 3 < 4
    assert "*.example.co.uk:443" in got  # below the public suffix co.uk
    assert "*.github.io:443" not in got and "x0.github.io:443" in got
    assert not any(r.startswith("-") for r in got)
    rules = [s.rule for s in suggest(ROWS)]
    assert rules.index("api.openai.com:80") == rules.index("api.openai.com:443") - 1  # ports in order
    assert rules[-2:] == ["203.0.113.7:8443", "[2001:db8::7]:443"]  # addresses after the names
    assert rules.index("clawhub.ai:443") < rules.index("api.openai.com:80")  # .ai before .com
    assert rules.index("s0.three.example.net:443") < rules.index("s1.three.example.net:443")
    for rule in rules:
        egress.parse_rule(rule)  # every entry is a valid rule


def test_render_toml_is_an_egress_line_with_counts() -> None:
    import tomllib

    text = render_toml(suggest(ROWS))
    parsed = tomllib.loads(text)
    assert parsed["egress"] == [s.rule for s in suggest(ROWS)]
    assert '"api.openai.com:443",' in text and "# 7 connections" in text
    assert "# 3 connections, 3 denied" in text
    assert "4 subdomains: s0.telegram.org" in text
    assert "DNS queries only (port guessed)" in text
    assert tomllib.loads(render_toml([])) == {"egress": []}


def _rec(host: str, port: int, verdict: str, reason: str, bot: str = "a", at: float = 0.0) -> ConnRecord:
    return ConnRecord(at or time.time(), bot, 0, "connect", host, port, verdict, reason)


def test_suggest_from_the_log_and_the_daemon_operation(tmp_path: Path) -> None:
    log = ConnLog(log_path(tmp_path))
    log.start()
    try:
        log.add(_rec("www.example.com", 443, "allowed", "learn"))
        log.add(_rec("www.example.com", 443, "allowed", "learn"))
        log.add(_rec("old.example.com", 443, "allowed", "learn", at=time.time() - 7200))
        log.add(
            _rec(
                "other.example.com",
                443,
                "denied",
                "host other.example.com:443 is not in the egress allowlist",
            )
        )
        log.add(
            _rec("loopy.example.com", 443, "denied", "loopy.example.com resolves to a refused address: x")
        )
        log.add(_rec("else.example.com", 443, "allowed", "open", bot="b"))
        assert log.flush()
    finally:
        log.close()
    rows = reached(log_path(tmp_path), "a")
    assert {(h, p, v) for h, p, v, _ in rows} == {
        ("www.example.com", 443, "allowed"),
        ("old.example.com", 443, "allowed"),
        ("other.example.com", 443, "denied"),  # an allowlist entry would let it through
    }  # loopy: no entry could allow it; else: another bot
    assert {h for h, *_ in reached(log_path(tmp_path), "a", since=time.time() - 3600)} == {
        "www.example.com",
        "other.example.com",
    }
    component = GatewayComponent(tmp_path)
    reply = asyncio.run(component.op_net_suggest(NetSuggestRequest(bot="a"), None))  # type: ignore[arg-type]
    assert [r["rule"] for r in reply] == [
        "old.example.com:443",
        "other.example.com:443",
        "www.example.com:443",
    ]
    assert reply[2]["count"] == 2 and reply[1]["denied"] == 1


def test_suggest_flags_checked_before_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path / "state"))
    assert cli.main(["net", "suggest", "bot", "--since", "yesterday-ish"]) == 2
    assert "--since 'yesterday-ish' is not a duration" in capsys.readouterr().err
    assert not (tmp_path / "state" / "clawpen.sock").exists()


def test_plans_describe_learn_mode_in_words() -> None:
    from clawpen.spec.learnmode import describe

    assert describe("learn:86400") == '"learn" (open for 1d from the first start, logged; then nothing)'
    assert describe("learn:7200").startswith('"learn" (open for 2h')
    assert describe(("a.example.com:443", "b.example.com:80")) == "a.example.com:443, b.example.com:80"
    assert describe("open") == "open"
