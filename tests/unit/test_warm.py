"""Warm spares: slot names, and `restart.warm` in the stored policy (clawpen.daemon.warm)."""

from __future__ import annotations

from pathlib import Path

from clawpen.daemon.store import policy_hash
from clawpen.daemon.warm import paths, slot_of
from clawpen.spec.loader import parse_spec_text


def test_slots_have_their_own_cgroup_pipes_and_status_file() -> None:
    assert slot_of("s1234-bot.0", "s1234-bot.0") == 0
    assert slot_of("s1234-bot.0.b", "s1234-bot.0") == 1
    assert slot_of(None, "bot.0") == 0  # a row without a cgroup: the cold start's names
    assert slot_of("other.0.b", "bot.0") == 0
    zero, one = paths(Path("/run"), "bot", 2, 0), paths(Path("/run"), "bot", 2, 1)
    assert zero == {k: Path(f"/run/bot.2.{k}") for k in ("out", "err", "status")}  # as before spares
    assert one == {k: Path(f"/run/bot.2.b.{k}") for k in ("out", "err", "status")}


def dumped(tmp_path: Path, restart: str) -> dict[str, object]:
    spec = tmp_path / "clawpen.toml"
    spec.write_text(f'[bots.a]\ncommand = ["sleep", "300"]\n{restart}')
    bot = parse_spec_text(spec.read_text(), spec).spec.bots["a"]
    return bot.model_dump(mode="json", by_alias=True)


def test_warm_is_on_by_default_and_absent_from_the_stored_policy(tmp_path: Path) -> None:
    default = dumped(tmp_path, "")
    assert "warm" not in default["restart"]  # type: ignore[operator]
    explicit = dumped(tmp_path, "[bots.a.restart]\nwarm = true\n")
    assert policy_hash({"spec": explicit}) == policy_hash({"spec": default})  # nothing restarts
    off = dumped(tmp_path, "[bots.a.restart]\nwarm = false\n")
    assert off["restart"]["warm"] is False  # type: ignore[index]
    assert policy_hash({"spec": off}) != policy_hash({"spec": default})  # opting out restarts it


def test_no_spare_is_built_while_the_host_is_short_of_memory(tmp_path: Path) -> None:
    from clawpen.daemon.warm import memory_low

    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       1000000 kB\nMemFree:  1 kB\nMemAvailable:    99999 kB\n")
    assert memory_low(info)
    info.write_text("MemTotal:       1000000 kB\nMemAvailable:   100001 kB\n")
    assert not memory_low(info)
    assert not memory_low(tmp_path / "missing")  # unknown: build it


def test_the_other_slot_of_a_cgroup_is_its_spares() -> None:
    from clawpen.daemon.warm import other_slot

    assert other_slot("s1234-bot.0") == "s1234-bot.0.b"
    assert other_slot("s1234-bot.0.b") == "s1234-bot.0"
    assert other_slot(other_slot("bot.3")) == "bot.3"
