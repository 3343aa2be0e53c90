"""``[bots.NAME.network.limits]``: per-bot gateway quotas as spec knobs (issue 13, item 2).

The knobs load with clear errors (exit 2, file:line and key path, a hint), travel through the
policy and the plan into the gateway's per-bot record (``BotLink``), and the gateway's
admission (:class:`Fairness`) and DNS queue (:class:`FairQueue`) hold each bot to its own
limits, at the same time as other bots to theirs. A bot that sets no knob keeps the policy
hash it had before the knobs existed, so an upgrade restarts no bot.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from clawpen.cli import main
from clawpen.daemon.store import policy_hash
from clawpen.daemon.up import _policy
from clawpen.errors import ClawpenError
from clawpen.net.dnsfair import FairQueue
from clawpen.net.fair import Fairness
from clawpen.net.links import Link, LinkManager
from clawpen.plan.build import HostFacts, build_plan, describe_network
from clawpen.plan.model import Identity, NetLink, SeccompPolicy
from clawpen.spec.loader import load_spec, parse_spec_text
from clawpen.spec.models import Bot
from clawpen.spec.policy import BotPolicy
from clawpen.spec.quotas import DEFAULT_NET_LIMITS, NetLimits

BOT = '[bots.a]\ncommand = ["python3", "bot.py"]\nnetwork.egress = ["api.example.com:443"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clawpen.toml"
    path.write_text(textwrap.dedent(text))
    return path


def policy_of(tmp_path: Path, text: str) -> BotPolicy:
    loaded = load_spec(write(tmp_path, text))
    return loaded.spec.bots["a"].to_policy("a", str(loaded.base_dir))


# ----------------------------------------------------------------------------- the spec


def test_the_knobs_load_into_the_policy_and_unset_ones_keep_the_defaults(tmp_path: Path) -> None:
    policy = policy_of(
        tmp_path,
        BOT + "[bots.a.network.limits]\nconnections = 4\nconnections_per_s = 0.5\ndns_queue = 8\n",
    )
    assert policy.net_limits == DEFAULT_NET_LIMITS._replace(connections=4, connections_per_s=0.5, dns_queue=8)
    # a bot without the table has the gateway's defaults, the figures of the first step
    assert policy_of(tmp_path, BOT).net_limits == NetLimits(1024, 50.0, 100, 16, 50.0, 200, 64, 8)


def test_the_plan_carries_the_limits_to_the_link(tmp_path: Path) -> None:
    policy = policy_of(tmp_path, BOT + "network.limits = { connections = 4, dns_per_s = 5 }\n")
    ident = Identity("clawpen-a", 1_900_000_001, 1_900_000_001)
    host = HostFacts(cpu_count=4, system_dirs=(("/usr", None),), etc_entries=())
    link = NetLink("/var/lib/clawpen/netns/a.0", "10.213.0.6", "10.213.0.5")
    plan = build_plan(policy, ident, host, SeccompPolicy(), link=link)
    assert plan.link is not None and plan.link.limits.connections == 4 and plan.link.limits.dns_per_s == 5
    data = json.loads(json.dumps(plan.to_dict()))  # what `clawpen plan --json` prints
    assert data["link"]["limits"]["connections"] == 4
    assert data["link"]["limits"]["dns_burst"] == DEFAULT_NET_LIMITS.dns_burst
    assert describe_network(plan).endswith("; limits: connections 4, dns_per_s 5")
    # the preview outside the daemon shows them too; defaults are not mentioned
    assert build_plan(policy, ident, host, SeccompPolicy()).link.limits.connections == 4  # type: ignore[union-attr]
    plain = build_plan(
        policy._replace(net_limits=DEFAULT_NET_LIMITS), ident, host, SeccompPolicy(), link=link
    )
    assert "limits" not in describe_network(plain)


@pytest.mark.parametrize(
    ("line", "key", "said"),
    [
        ("connections = 0", "connections", "connections = 0 is out of range: 1 to 65536"),
        ("connections = 100000", "connections", "1 to 65536 open connections"),
        ("connections_per_s = 0", "connections_per_s", "0.01 to 10000"),
        ("connections_per_s = -1.5", "connections_per_s", "-1.5 is out of range"),
        ("connections_per_s = nan", "connections_per_s", "nan is out of range"),
        ("connection_burst = 0", "connection_burst", "1 to 100000 new connections at once"),
        ("pending_heads = 5000", "pending_heads", "1 to 4096 unfinished request heads"),
        ("dns_per_s = inf", "dns_per_s", "inf is out of range"),
        ("dns_burst = -3", "dns_burst", "1 to 100000 DNS queries at once"),
        ("dns_queue = 2000", "dns_queue", "1 to 1024 queued DNS queries"),
        ("dns_tcp_connections = 0", "dns_tcp_connections", "1 to 256"),
        ("connections = true", "connections", "valid integer"),
        ("connections = 4.5", "connections", "valid integer"),
        ('dns_per_s = "50"', "dns_per_s", "valid number"),
        ("conections = 4", "conections", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_knob_is_refused_with_its_key_path(tmp_path: Path, line: str, key: str, said: str) -> None:
    path = write(tmp_path, f"{BOT}[bots.a.network.limits]\n{line}\n")
    with pytest.raises(ClawpenError) as err:
        load_spec(path)
    assert err.value.exit_code == 2
    assert said in err.value.what, err.value.what
    assert err.value.where == f"{path}:5 bots.a.network.limits.{key}"
    assert err.value.hint
    if "out of range" in said:
        assert f"leave {key} out" in err.value.hint
    # positive control: a sane value of the same key loads
    good = {"conections": "connections"}.get(key, key)
    assert policy_of(tmp_path, f"{BOT}[bots.a.network.limits]\n{good} = 7\n").net_limits._asdict()[good] == 7


def test_the_cli_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BOT + "network.limits = { dns_queue = 0 }\n")
    assert main(["plan", "-f", str(path), "a"]) == 2
    err = capsys.readouterr().err
    assert "bots.a.network.limits.dns_queue" in err and "dns_queue = 0 is out of range" in err


def test_limits_without_egress_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[bots.a]\ncommand = ["x"]\nnetwork.limits = { connections = 4 }\n')
    with pytest.raises(ClawpenError) as err:
        load_spec(path)
    assert err.value.exit_code == 2 and "no egress" in err.value.what
    assert "bots.a.network" in (err.value.where or "") and "egress" in (err.value.hint or "")
    assert policy_of(tmp_path, BOT + "network.limits = { connections = 4 }\n").net_limits.connections == 4


# ----------------------------------------------------------------------------- the policy hash

HASH_SPEC = """
[bots.fetcher]
command = ["python3", "/app/fetch.py"]
env = { MODE = "prod" }
replicas = 2
resources = { cpus = 0.25, memory = "64M", pids = 16 }
restart = { policy = "always", backoff_max = "30s" }
health = { tcp = "127.0.0.1:8000", interval = "5s" }
network = { egress = ["pypi.org:443", "*.telegram.org:443"], allow_private = ["10.20.0.0/16"], \
bandwidth = "8mbit", burst = "256kb", ipv6 = true, publish = ["127.0.0.1:18000:8000"] }

[bots.plain]
command = ["sleep", "60"]

[bots.open]
command = ["sleep", "60"]
network.egress = "open"
"""
# Computed on main at 7966356 (before the knobs existed) with the same recipe as `hashes`:
# parse HASH_SPEC, then policy_hash(up._policy(loaded, name)) with base_dir /srv/bots.
HASHES_BEFORE = {"fetcher": "8e69f0b2303b64d9", "plain": "9cb7cd2fb849dfaa", "open": "651acc6a23a72ed5"}


def hashes(text: str) -> dict[str, str]:
    loaded = parse_spec_text(text, Path("/nonexistent/clawpen.toml"))
    loaded = dataclasses.replace(loaded, base_dir=Path("/srv/bots"))
    return {name: policy_hash(_policy(loaded, name)) for name in loaded.spec.bots}


def _with_limits(table: str) -> str:
    """HASH_SPEC with ``limits = { table }`` in the fetcher's network (an inline table)."""
    end = 'publish = ["127.0.0.1:18000:8000"] }'
    assert end in HASH_SPEC
    return HASH_SPEC.replace(end, end[:-2] + f", limits = {{ {table} }} }}")


def test_a_bot_without_the_knobs_keeps_the_policy_hash_it_had_before_them() -> None:
    assert hashes(HASH_SPEC) == HASHES_BEFORE
    # the defaults written out change nothing either (no restart for a no-op edit) ...
    assert hashes(_with_limits("connections = 1024, dns_per_s = 50.0"))["fetcher"] == HASHES_BEFORE["fetcher"]
    assert hashes(_with_limits(""))["fetcher"] == HASHES_BEFORE["fetcher"]
    # ... while a real change is seen (the bot is recreated, its link registered again)
    changed = hashes(_with_limits("connections = 4"))
    assert changed["fetcher"] != HASHES_BEFORE["fetcher"]
    assert {k: v for k, v in changed.items() if k != "fetcher"} == {
        "plain": "9cb7cd2fb849dfaa",
        "open": "651acc6a23a72ed5",
    }


def test_the_stored_policy_brings_the_limits_back() -> None:
    loaded = parse_spec_text(
        _with_limits("connections = 4, connections_per_s = 2.5"), Path("/x/clawpen.toml")
    )
    stored = json.loads(json.dumps(_policy(loaded, "fetcher")))  # as the daemon keeps it
    assert stored["spec"]["network"]["limits"] == {"connections": 4, "connections_per_s": 2.5}
    again = Bot.model_validate(stored["spec"], context={"base_dir": "/x"})
    assert again.to_policy("fetcher", "/x").net_limits == DEFAULT_NET_LIMITS._replace(
        connections=4, connections_per_s=2.5
    )
    assert "limits" not in json.loads(json.dumps(_policy(loaded, "plain")))["spec"]["network"]


# ----------------------------------------------------------------------------- the link record


def test_the_link_registry_hands_each_bot_its_limits_and_follows_a_change(tmp_path: Path) -> None:
    manager = LinkManager(tmp_path)  # no namespace is made: only the registry is used here
    small = DEFAULT_NET_LIMITS._replace(connections=4)
    a = Link("a", 0, 1, "cb1", "10.213.0.6", "10.213.0.5", 30, str(tmp_path / "a.0"))
    b = Link("b", 0, 2, "cb2", "10.213.0.10", "10.213.0.9", 30, str(tmp_path / "b.0"))
    manager._register(a, BotPolicy("a", ("x",), egress=("x.test:443",), net_limits=small))
    manager._register(b, BotPolicy("b", ("x",), egress=("x.test:443",)))
    got_a, got_b = manager.by_source("10.213.0.6"), manager.by_source("10.213.0.10")
    assert got_a is not None and got_a.limits == small
    assert got_b is not None and got_b.limits == DEFAULT_NET_LIMITS
    manager._register(a, BotPolicy("a", ("x",), egress=("x.test:443",)))  # the spec changed back
    assert manager.by_source("10.213.0.6").limits == DEFAULT_NET_LIMITS  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- Fairness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


A, B = ("alpha", 0), ("beta", 0)


def test_open_connections_are_capped_per_bot_with_each_bots_own_limit() -> None:
    fair = Fairness()
    small = DEFAULT_NET_LIMITS._replace(connections=4)
    assert [fair.admit(A, small) for _ in range(4)] == [None] * 4
    assert [fair.admit(B) for _ in range(20)] == [None] * 20  # interleaved: beta is not held
    assert fair.admit(A, small) == "more than 4 open connections"
    assert fair.admit(B) is None  # defaults: far from 1024
    assert fair.active(A) == (4, 0) and fair.active(B) == (21, 0)
    assert fair.counts()["alpha"]["refused_busy"] == 1 and "beta" not in fair.counts()
    fair.conn_done(A)
    assert fair.admit(A, small) is None  # a place freed: admitted again


def test_the_rate_and_burst_are_per_bot() -> None:
    clock = Clock()
    fair = Fairness(clock=clock)
    slow = DEFAULT_NET_LIMITS._replace(connections_per_s=2.0, connection_burst=3)
    assert [fair.admit(A, slow) for _ in range(3)] == [None] * 3
    assert fair.admit(A, slow) == "more than 2 new connections per second"
    assert [fair.admit(B) for _ in range(50)] == [None] * 50  # beta's burst is 100
    clock.now += 0.5  # one token back for alpha (2/s)
    assert fair.admit(A, slow) is None
    assert fair.admit(A, slow) is not None
    assert fair.counts()["alpha"]["refused_rate"] == 2


def test_pending_heads_are_per_bot() -> None:
    fair = Fairness()
    few = DEFAULT_NET_LIMITS._replace(pending_heads=2)
    for key, limits in ((A, few), (B, None)):
        for _ in range(5):
            assert fair.admit(key, limits) is None
    assert [fair.take_head(A) for _ in range(3)] == [None, None, "more than 2 unfinished request heads"]
    assert [fair.take_head(B) for _ in range(5)] == [None] * 5
    fair.head_done(A)
    assert fair.take_head(A) is None


def test_a_link_registered_again_with_other_limits_gets_them() -> None:
    fair = Fairness()
    four, two = DEFAULT_NET_LIMITS._replace(connections=4), DEFAULT_NET_LIMITS._replace(connections=2)
    for _ in range(3):
        assert fair.admit(A, four) is None
    assert fair.admit(A, two) == "more than 2 open connections"  # lowered: the open ones stay
    assert fair.admit(A, four) is None  # raised again
    assert fair.admit(A, DEFAULT_NET_LIMITS) is None
    slow = DEFAULT_NET_LIMITS._replace(connections_per_s=0.01, connection_burst=1)
    assert fair.admit(B, slow) is None
    assert fair.admit(B, slow) is not None
    assert fair.admit(B, DEFAULT_NET_LIMITS) is not None  # a new bucket size does not mint tokens


def test_the_gateway_wide_default_serves_links_without_limits() -> None:
    fair = Fairness(DEFAULT_NET_LIMITS._replace(connections=1))
    assert fair.admit(A) is None and fair.admit(A) == "more than 1 open connections"
    assert fair.admit(B, DEFAULT_NET_LIMITS) is None and fair.admit(B, DEFAULT_NET_LIMITS) is None


# ----------------------------------------------------------------------------- the DNS queue


def test_dns_rate_and_queue_are_per_source_with_each_sources_limits() -> None:
    clock = Clock()
    queue: FairQueue[int] = FairQueue(clock=clock)
    burst3 = DEFAULT_NET_LIMITS._replace(dns_per_s=1.0, dns_burst=3)
    short = DEFAULT_NET_LIMITS._replace(dns_queue=2)
    got = {"a": [], "b": [], "c": []}  # type: dict[str, list[str | None]]
    for i in range(10):  # all three at once, interleaved
        got["a"].append(queue.offer("a", i, burst3))
        got["b"].append(queue.offer("b", i, short))
        got["c"].append(queue.offer("c", i, DEFAULT_NET_LIMITS))
    assert got["a"] == [None] * 3 + ["rate"] * 7
    assert got["b"] == [None] * 2 + ["queue"] * 8
    assert got["c"] == [None] * 10  # defaults: a queue of 64
    assert queue.take_dropped() == {"a": {"rate": 7, "queue": 0}, "b": {"rate": 0, "queue": 8}}
    clock.now += 1.0  # one query a second for "a"
    assert queue.offer("a", 99, burst3) is None and queue.offer("a", 100, burst3) == "rate"


def test_dns_limits_follow_a_change_and_allow_spends_the_sources_own_bucket() -> None:
    clock = Clock()
    queue: FairQueue[int] = FairQueue(clock=clock)
    one = DEFAULT_NET_LIMITS._replace(dns_per_s=0.01, dns_burst=1)
    assert queue.allow("a", one) and not queue.allow("a", one)
    assert queue.allow("b", DEFAULT_NET_LIMITS)  # another source, its own bucket
    many = DEFAULT_NET_LIMITS._replace(dns_per_s=100.0, dns_burst=50)
    assert not queue.allow("a", many)  # a new rate mints no token at once ...
    clock.now += 0.1
    assert sum(queue.allow("a", many) for _ in range(20)) == 10  # ... but refills at 100/s
    short = DEFAULT_NET_LIMITS._replace(dns_queue=1)
    clock.now += 1.0
    assert queue.offer("a", 1, short) is None and queue.offer("a", 2, short) == "queue"


def test_a_source_without_limits_gets_the_queues_defaults() -> None:
    queue: FairQueue[int] = FairQueue(rate=1.0, burst=2, per_source=64, clock=Clock())
    assert [queue.offer("unknown", i) for i in range(3)] == [None, None, "rate"]
