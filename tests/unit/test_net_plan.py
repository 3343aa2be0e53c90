"""Plans of bots with a gateway link: resolver, proxy variables, bubblewrap joins the namespace."""

from __future__ import annotations

from clawpen.plan.build import HostFacts, build_plan, describe_network
from clawpen.plan.model import Identity, NetLink, SeccompPolicy
from clawpen.sandbox.bwrap import BwrapFds, bwrap_argv
from clawpen.spec.policy import BotPolicy

HOST = HostFacts(cpu_count=4, system_dirs=(("/usr", None),), etc_entries=())
IDENT = Identity("clawpen-a", 1_900_000_001, 1_900_000_001)
LINK = NetLink("/var/lib/clawpen/netns/a.0", "10.213.0.6", "10.213.0.5")


def _plan(egress: tuple[str, ...] | str = ("api.example.com:443",), link: NetLink | None = LINK):  # type: ignore[no-untyped-def]
    policy = BotPolicy(name="a", command=("sleep", "1"), egress=egress)
    return build_plan(policy, IDENT, HOST, SeccompPolicy(), link=link)


def _data(plan, dest: str) -> str:  # type: ignore[no-untyped-def]
    return next(m.data for m in plan.mounts if m.dest == dest)


def test_a_linked_bot_resolves_and_proxies_through_its_gateway() -> None:
    plan = _plan()
    assert plan.network == "link" and plan.link is not None
    assert plan.link.egress == ("api.example.com:443",)
    assert "nameserver 10.213.0.5\n" in _data(plan, "/etc/resolv.conf")
    env = dict(plan.env)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[name] == "http://10.213.0.5:3128"
    assert env["NO_PROXY"] == "localhost,127.0.0.1"
    assert "net" in plan.namespaces  # `clawpen exec` and health checks still join its namespace


def _fds(plan) -> BwrapFds:  # type: ignore[no-untyped-def]
    return BwrapFds(data={m.dest: 10 + i for i, m in enumerate(plan.mounts) if m.kind == "data"})


def test_bwrap_runs_in_the_link_namespace_instead_of_a_new_one() -> None:
    linked = _plan()
    argv = bwrap_argv(linked, _fds(linked))
    assert "--unshare-net" not in argv and "--unshare-user" in argv
    plain = _plan(egress=(), link=None)
    assert "--unshare-net" in bwrap_argv(plain, _fds(plain))


def test_a_bot_without_egress_has_no_link_and_no_proxy() -> None:
    plan = _plan(egress=(), link=None)
    assert plan.network == "none" and plan.link is None
    assert "HTTP_PROXY" not in dict(plan.env)
    assert "nameserver" not in _data(plan, "/etc/resolv.conf")
    assert describe_network(plan) == "none (loopback only)"


def test_outside_the_daemon_the_link_is_a_preview() -> None:
    plan = _plan(egress="open", link=None)
    assert plan.link is not None and plan.link.preview
    assert "example addresses" in describe_network(plan)
    assert describe_network(_plan()).startswith("link eth0 10.213.0.6/30 via gateway 10.213.0.5")
