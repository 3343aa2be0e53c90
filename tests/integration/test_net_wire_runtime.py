"""The daemon's runtime under a tier that makes the bot's network namespace itself
(``Tier.makes_netns``, as the container tier does): the instance reserves its link for the
plan, the tier calls ``wire_net(pid)`` once the bot's namespaces exist and before its command
runs, each restart is wired again into the new namespace, and a stop for good removes the link.

The tier here is the namespace tier made to behave like a container engine: bubblewrap makes
the bot's network namespace (``--unshare-net``: only ``lo``) instead of joining the link's, and
the bot stays blocked until ``wire_net`` has run with its pid. Real bots (bubblewrap, their own
uid), a real :class:`LinkManager`, a fake gateway in its gateway namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from helpers import PY, session_uid_base
from test_net_links import FakeGateway

from clawpen.daemon.runtime import Instance, Services
from clawpen.daemon.store import Store
from clawpen.logs.upkeep import Compressor
from clawpen.net.links import LinkManager
from clawpen.net.types import PROXY_PORT
from clawpen.plan.build import HostFacts
from clawpen.plan.model import Plan
from clawpen.sandbox.namespace import INHERIT, NamespaceTier, Sandbox
from clawpen.sandbox.procs import become_subreaper
from clawpen.sandbox.seccomp import default_policy
from clawpen.sandbox.tier import Stdio
from clawpen.spec.models import Bot

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.netns]

BOT = r"""
import json, os, socket, time
gw = open("/etc/resolv.conf").read().split()[-1]
s = socket.socket()
s.settimeout(3)
try:
    s.connect((gw, int(os.environ["PORT"])))
    got = "open:" + s.recv(64).decode().strip()
except OSError as e:
    got = "error:" + (e.strerror or str(e))
print(json.dumps({"ifs": sorted(n for _, n in socket.if_nameindex()), "gw": gw, "got": got}), flush=True)
time.sleep(60)
"""


class WiringSandbox(Sandbox):
    """bubblewrap's sandbox, wired (``wire_net``) after its namespaces exist, before it runs."""

    wire: Callable[[int], None] | None = None

    def _read_child_pid(self) -> int:
        child = super()._read_child_pid()
        if self.wire is not None:
            self.wire(child)  # bwrap is still blocked on its block fd: the bot has not started
        return child


class WiringTier(NamespaceTier):
    """The namespace tier, but making the bot's network namespace itself (``makes_netns``)."""

    makes_netns = True

    def __init__(self, state: Path) -> None:
        super().__init__(state)
        self.wired: list[int] = []  # the pids wire_net was called with

    def start(
        self,
        plan: Plan,
        *,
        cgroup_name: str | None = None,
        stdio: Stdio = INHERIT,
        status_fd: int | None = None,
        secrets: Mapping[str, bytes] = MappingProxyType({}),
        wire_net: Callable[[int], None] | None = None,
    ) -> Sandbox:
        become_subreaper()
        # no link in what bwrap sees: it makes a network namespace of its own
        sandbox = WiringSandbox(
            self, plan._replace(link=None), cgroup_name=cgroup_name or plan.bot, stdio=stdio, secrets=secrets
        )
        if wire_net is not None:

            def wire(pid: int) -> None:
                self.wired.append(pid)
                wire_net(pid)

            sandbox.wire = wire
        try:
            sandbox.setup(status_fd)
            sandbox.spawn()
        except BaseException:
            sandbox.teardown()
            raise
        return sandbox


class Rig:
    def __init__(self, tmp: Path, gateway: FakeGateway | None = None) -> None:
        self.manager = LinkManager(tmp)
        self.own_gateway = gateway is None
        # (a fake gateway's listeners stay bound while its threads wait in accept: a second
        # daemon on the same gateway namespace shares the first one's)
        self.gateway = FakeGateway(self.manager.gateway_netns_fd) if gateway is None else gateway
        self.tier = WiringTier(tmp)
        self.notes: list[tuple[str, str]] = []
        self.store = Store(tmp / "clawpen.db", records=tmp / "run")
        self.compressor = Compressor()
        self.closed = False
        self.made: list[Instance] = []
        self.svc = Services(
            tiers={"sandbox": self.tier},
            cgroups=lambda: None,
            store=self.store,
            state_dir=tmp,
            logs_dir=tmp / "logs",
            run_dir=tmp / "run",
            host=HostFacts.probe(),
            seccomp=default_policy(),
            clock=time.time,
            record=lambda change: None,
            bpf=lambda: b"",
            compressor=self.compressor,
            secrets=lambda names: {},
            note=lambda kind, why, bot, replica: self.notes.append((kind, why)),
            network=self.manager,
        )

    def instance(self, name: str, script: str = BOT, **network: Any) -> Instance:
        bot = Bot.model_validate(
            {"command": [PY, "-c", script], "env": {"PORT": str(PROXY_PORT)}, "network": network}
        )
        inst = Instance(self.svc, name, 0, bot, str(self.svc.state_dir))
        self.made.append(inst)
        return inst

    def said(self, inst: Instance) -> list[dict[str, Any]]:
        """The JSON lines the bot printed so far (its log)."""
        out = []
        for path in sorted((self.svc.logs_dir).rglob(f"{inst.log_name}*")):
            if path.is_file():
                for line in path.read_text(errors="replace").splitlines():
                    at = line.find('{"ifs"')
                    if at >= 0:
                        out.append(json.loads(line[at:]))
        return out

    def close(self, *, destroy: bool = True) -> None:
        """``destroy``: remove every link too (else: a daemon exit, which leaves them to the next)."""
        if destroy:
            for inst in self.made:  # a test that failed midway leaves no bot and no relay
                if inst.sandbox is not None:
                    inst.sandbox.kill(monitor=True)
                    with contextlib.suppress(Exception):
                        inst.sandbox.teardown()
                if inst.net.relay is not None:
                    inst.net.relay.stop()
            if self.own_gateway:
                self.gateway.close()
            self.manager.destroy()
        else:
            self.manager.close()
        if not self.closed:
            self.closed = True
            self.store.close()
            self.compressor.close(timeout=5)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.setenv("CLAWPEN_UID_BASE", str(session_uid_base()))
    tmp_path.chmod(0o755)
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


async def until(cond: Callable[[], bool], within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


def ns_of(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_the_runtime_wires_each_new_namespace_and_removes_the_link_at_stop(rig: Rig) -> None:
    linked = rig.instance("linked", egress=["example.com:443"])
    plain = rig.instance("plain")  # no egress: no link, the tier is given no wire_net

    async def scenario() -> None:
        linked.start()
        plain.start()
        await until(lambda: len(rig.said(linked)) == 1 and len(rig.said(plain)) == 1)
        link = rig.manager.link("linked", 0)
        assert link is not None and linked.net.link == link
        first = linked.sandbox
        assert first is not None and first.sandbox_pid is not None
        assert rig.tier.wired == [first.sandbox_pid]  # once, for the linked bot only
        # the link's path is the namespace the tier made for the bot
        assert ns_of(link.netns) == ns_of(f"/proc/{first.sandbox_pid}/ns/net")
        said = rig.said(linked)[0]
        assert said == {"ifs": ["eth0", "lo"], "gw": link.gw_addr, "got": "open:gateway"}
        assert (link.bot_addr, link.gw_addr, PROXY_PORT) in rig.gateway.seen
        # negative control: the unlinked bot's namespace has only lo, and no way out
        alone = rig.said(plain)[0]
        assert alone["ifs"] == ["lo"] and alone["got"].startswith("error:"), alone

        # a restart is a new namespace: wired again, same addresses
        linked.restart()
        await until(lambda: len(rig.said(linked)) == 2)
        second = linked.sandbox
        assert second is not None and second.sandbox_pid not in (None, first.sandbox_pid)
        assert rig.tier.wired == [first.sandbox_pid, second.sandbox_pid]
        again = rig.manager.link("linked", 0)
        assert again is not None and again.bot_addr == link.bot_addr
        assert ns_of(link.netns) == ns_of(f"/proc/{second.sandbox_pid}/ns/net")
        assert rig.said(linked)[1]["got"] == "open:gateway"
        assert [p for p, _, port in rig.gateway.seen if port == PROXY_PORT].count(link.bot_addr) == 2

        # stopped for good: the link and the mount are gone
        for inst in (linked, plain):
            inst.stop()
            await inst.stopped()
        assert rig.manager.link("linked", 0) is None
        assert rig.manager.by_source(link.bot_addr) is None
        assert not os.path.exists(link.netns)
        ifs = Path("/proc/self/mountinfo").read_text()
        assert f" {link.netns} " not in ifs

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert not [n for n in rig.notes if n[0] in ("error", "network")], rig.notes


def test_a_restarted_daemon_adopts_the_wired_link_and_wires_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAWPEN_UID_BASE", str(session_uid_base()))
    tmp_path.chmod(0o755)
    old = Rig(tmp_path)
    inst = old.instance("kept", egress=["example.com:443"])
    loop = asyncio.new_event_loop()
    new: Rig | None = None
    again: Instance | None = None
    try:

        async def first_daemon() -> None:
            inst.start()
            await until(lambda: len(old.said(inst)) == 1)
            assert inst.task is not None
            inst.task.cancel()  # the daemon exits; the bot keeps running, its link too
            with contextlib.suppress(asyncio.CancelledError):
                await inst.task

        loop.run_until_complete(asyncio.wait_for(first_daemon(), 60))
        rest = asyncio.all_tasks(loop)
        for task in rest:  # what the daemon's exit cancels with it
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        link = old.manager.link("kept", 0)
        assert link is not None and inst.sandbox is not None
        pid = inst.sandbox.sandbox_pid
        (row,) = old.store.instances("kept")
        old.close(destroy=False)
        assert ns_of(link.netns) == ns_of(f"/proc/{pid}/ns/net")  # still there, still its own

        new = rig = Rig(tmp_path, old.gateway)  # the next daemon: a new manager, the same state
        again = adopter = new.instance("kept", egress=["example.com:443"])

        async def second_daemon() -> None:
            assert adopter.adopt(row)
            await until(lambda: adopter.net.link is not None)
            assert adopter.net.link == link
            assert rig.manager.by_source(link.bot_addr) is not None
            assert rig.tier.wired == []  # adopted: nothing wired
            adopter.restart()  # its next namespace is wired by this daemon, same addresses
            await until(lambda: len(rig.said(adopter)) == 2)
            assert adopter.sandbox is not None and adopter.sandbox.sandbox_pid not in (None, pid)
            assert rig.tier.wired == [adopter.sandbox.sandbox_pid]
            assert ns_of(link.netns) == ns_of(f"/proc/{adopter.sandbox.sandbox_pid}/ns/net")
            assert rig.said(adopter)[1]["got"] == "open:gateway"
            adopter.stop()
            await adopter.stopped()
            assert not os.path.exists(link.netns)

        loop.run_until_complete(asyncio.wait_for(second_daemon(), 60))
    finally:
        for one in (inst, again):
            if one is not None and one.sandbox is not None:  # a failure midway: no bot left
                one.sandbox.kill(monitor=True)
                with contextlib.suppress(Exception):
                    one.sandbox.teardown()
        loop.close()
        if new is not None:
            new.close()
        old.close()


SERVER = r"""
import os, socket
token = os.urandom(4).hex()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8000))
s.listen(8)
ifs = ",".join(sorted(n for _, n in socket.if_nameindex()))
while True:
    c, _ = s.accept()
    c.sendall(f"{token} {ifs}\n".encode())
    c.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fetch(port: int) -> str:
    """The line a published port answers with on the host's loopback ("" when nothing does)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except OSError:
        return ""
    try:
        return (await asyncio.wait_for(reader.readline(), 2)).decode().strip()
    except (OSError, TimeoutError):
        return ""
    finally:
        writer.close()


def test_published_ports_follow_each_new_namespace_the_tier_makes(rig: Rig) -> None:
    p_linked, p_plain = free_port(), free_port()
    linked = rig.instance("pub", SERVER, egress=["example.com:443"], publish=[f"127.0.0.1:{p_linked}:8000"])
    plain = rig.instance("lone", SERVER, publish=[f"127.0.0.1:{p_plain}:8000"])  # no link

    async def scenario() -> None:
        linked.start()
        plain.start()
        got: dict[int, str] = {}

        async def answered(port: int, differs: str = "") -> str:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                line = await fetch(port)
                if line and line != differs:
                    return line
                await asyncio.sleep(0.1)
            raise AssertionError(f"port {port} did not answer anew")

        got[p_linked] = await answered(p_linked)
        got[p_plain] = await answered(p_plain)
        # the relay reaches the bot in the namespace the tier made: through the link's path
        # (a bind of that namespace) for the linked bot, /proc/<pid>/ns/net for the other
        assert got[p_linked].endswith(" eth0,lo"), got
        assert got[p_plain].endswith(" lo"), got
        # a new container: the relay follows it to its new namespace
        linked.restart()
        again = await answered(p_linked, differs=got[p_linked])
        assert again.endswith(" eth0,lo") and again != got[p_linked]
        for inst in (linked, plain):
            inst.stop()
            await inst.stopped()
        assert await fetch(p_linked) == "" and await fetch(p_plain) == ""  # the relays stopped

    asyncio.run(asyncio.wait_for(scenario(), 60))
