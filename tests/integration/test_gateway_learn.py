"""``egress = "learn"`` at the real gateway against the fake internet (see gateway_env.py).

A learn-mode bot reaches any public server by name, as ``"open"`` would, never the host's own
or private addresses; each connection is logged with its name; ``net suggest`` turns the log
into the allowlist; once the period is over (an injected clock) the bot reaches nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from gateway_env import OTHER_ADDR, WWW_ADDR, Env, fake_internet

from clawpen.net.connlog import reached
from clawpen.net.suggest import render_toml, suggest
from clawpen.net.types import BotLink
from clawpen.spec.learnmode import learn_until_value

pytestmark = [pytest.mark.netns, pytest.mark.root]

UNTIL = time.time() + 3600


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with fake_internet(tmp_path_factory.mktemp("learn"), egress=learn_until_value(UNTIL)) as e:
        yield e


def test_learn_reaches_servers_by_name_and_logs_them(env: Env) -> None:
    via_proxy = env.curl("-x", env.proxy(), "https://other.test/p")  # in no allowlist at all
    assert via_proxy.returncode == 0, via_proxy.stderr
    assert f"hello from {OTHER_ADDR}:443 host=other.test" in via_proxy.stdout
    direct = env.curl("--noproxy", "*", "https://www.allowed.test/d")  # gateway DNS + SNI
    assert direct.returncode == 0, direct.stderr
    assert f"hello from {WWW_ADDR}:443 host=www.allowed.test path=/d" in direct.stdout
    plain = env.curl("--noproxy", "*", "http://other.test/h")
    assert f"hello from {OTHER_ADDR}:80" in plain.stdout
    assert env.wait_row(
        lambda r: r["kind"] == "connect" and r["host"] == "other.test" and r["reason"] == "learn"
    )
    assert env.wait_row(
        lambda r: r["kind"] == "transparent" and r["host"] == "www.allowed.test" and r["reason"] == "learn"
    )
    assert env.wait_row(lambda r: r["host"] == "other.test" and r["port"] == 80 and r["verdict"] == "allowed")


def test_learn_never_reaches_the_host_or_private_addresses(env: Env) -> None:
    # Positive control: the host-local service answers from the host (upstream) namespace.
    outside = env.curl(
        "--resolve", "loopy.allowed.test:8443:127.0.0.1", "https://loopy.allowed.test:8443/", ns=env.up
    )
    assert outside.returncode == 0 and "hello" in outside.stdout
    for url in (
        "https://loopy.allowed.test:8443/",
        "https://meta.allowed.test/",
        "https://tenx.allowed.test/",
    ):
        got = env.curl("-x", env.proxy(), url)
        assert got.returncode != 0 and "hello" not in got.stdout, url
    raw = env.curl("-x", env.proxy(), "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8443/")
    assert raw.stdout == "403"
    assert env.wait_row(
        lambda r: r["host"] == "loopy.allowed.test" and "refused address" in r["reason"], denied=True
    )


def test_suggest_prints_the_allowlist_of_what_was_reached(env: Env) -> None:
    env.curl("-x", env.proxy(), "https://www.allowed.test/s")
    assert env.wait_row(lambda r: r["kind"] == "connect" and r["host"] == "www.allowed.test")
    assert env.log is not None and env.log.flush()
    text = render_toml(suggest(reached(env.log.path, "alpha")))
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    assert lines[0] == "egress = ["
    # the two names reached on 443 and 80, once each, in order; nothing refused (loopy, meta, tenx)
    assert [x for x in lines if x.startswith('"')] == [
        '"www.allowed.test:443",',
        '"other.test:80",',
        '"other.test:443",',
    ]


def test_after_the_period_nothing_is_allowed(env: Env) -> None:
    assert env.gateway is not None
    view = env.gateway.policies
    ended: list[BotLink] = []
    view.on_ended, clock = ended.append, view.clock
    try:
        assert env.curl("-x", env.proxy(), "https://other.test/before").returncode == 0  # control
        view.clock = lambda: UNTIL + 1
        proxied = env.curl("-x", env.proxy(), "-o", "/dev/null", "-w", "%{http_code}", "http://other.test/")
        assert proxied.stdout == "403"
        connect = env.curl("-x", env.proxy(), "https://www.allowed.test/after")
        assert connect.returncode != 0 and "hello" not in connect.stdout
        nxdomain = env.curl("--noproxy", "*", "https://www.allowed.test/")
        assert nxdomain.returncode == 6  # the gateway's DNS answers nothing either
        forced = env.curl(
            "--noproxy", "*", "--resolve", f"other.test:443:{OTHER_ADDR}", "https://other.test/"
        )
        assert forced.returncode != 0 and "hello" not in forced.stdout
        assert [link.bot for link in ended] == ["alpha"]  # one event, however many denials
        assert env.wait_row(
            lambda r: r["host"] == "www.allowed.test" and "not in the egress allowlist" in r["reason"],
            denied=True,
        )
        # The denials after the period still feed the suggestion.
        assert env.log is not None and env.log.flush()
        got = {s.rule: s for s in suggest(reached(env.log.path, "alpha"))}
        assert got["www.allowed.test:443"].denied >= 1 and got["other.test:443"].denied >= 1
    finally:
        view.clock = clock
