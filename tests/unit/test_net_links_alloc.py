"""LinkManager bookkeeping that needs no namespace: subnet checks, address blocks, allocation file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clawpen.errors import ConfigError, HostError
from clawpen.net.links import Link, LinkManager


@pytest.mark.parametrize("subnet", ["8.8.8.0/24", "10.0.0.0/30", "fd00::/64", "banana", "10.0.0.1/40"])
def test_subnet_must_be_a_private_ipv4_range(tmp_path: Path, subnet: str) -> None:
    with pytest.raises(ConfigError) as err:
        LinkManager(tmp_path, subnet)
    assert err.value.where == "gateway.subnet" and err.value.hint


def test_blocks_and_allocation(tmp_path: Path) -> None:
    lm = LinkManager(tmp_path, "10.50.0.0/29")  # two /30 blocks
    assert lm._block(0) == ("10.50.0.1", "10.50.0.2")
    assert lm._block(1) == ("10.50.0.5", "10.50.0.6")
    lm._alloc["a.0"] = 0
    assert lm._allocate("a.0") == 0  # kept
    assert lm._allocate("b.0") == 1
    lm._alloc["b.0"] = 1
    with pytest.raises(HostError, match="no free link address"):
        lm._allocate("c.0")


def test_allocations_survive_a_new_manager(tmp_path: Path) -> None:
    lm = LinkManager(tmp_path)
    lm._alloc["bot.2"] = 7
    lm._save()
    data = json.loads((tmp_path / "net-links.json").read_text())
    assert data == {"subnet": "10.213.0.0/16", "links": {"bot.2": 7}}
    assert (tmp_path / "net-links.json").stat().st_mode & 0o777 == 0o600
    assert LinkManager(tmp_path)._allocate("bot.2") == 7
    (tmp_path / "net-links.json").write_text("{not json")
    assert LinkManager(tmp_path)._alloc == {}  # a torn or foreign file is not fatal


def test_by_source_and_plan_record(tmp_path: Path) -> None:
    lm = LinkManager(tmp_path)
    link = Link("a", 0, 1, "cb1", "10.213.0.6", "10.213.0.5", 30, str(tmp_path / "netns/a.0"))
    from clawpen.spec.policy import BotPolicy

    lm._register(
        link, BotPolicy(name="a", command=("x",), egress=("x.example:443",), allow_private=("10.0.0.0/8",))
    )
    found = lm.by_source("10.213.0.6")
    assert found is not None and found.bot == "a" and found.egress == ("x.example:443",)
    assert found.allow_private == ("10.0.0.0/8",)
    assert lm.by_source("10.213.0.5") is None
    rec = link.for_plan("open")
    assert (rec.netns, rec.bot_addr, rec.gw_addr, rec.interface, rec.egress) == (
        link.netns,
        "10.213.0.6",
        "10.213.0.5",
        "eth0",
        "open",
    )
