"""`up`'s diff: the pure release_plan, and op_up on a fake tier (what --dry-run shows is what
`up` then does, and a dry run changes nothing). Also: the spec's `tier` field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_tier import FakeTier, VirtualLoop

from clawpen.daemon.release import Current, Wanted, changed_fields, release_plan
from clawpen.daemon.runtime import Services
from clawpen.daemon.server import Daemon
from clawpen.daemon.store import Store, policy_hash
from clawpen.daemon.up import op_up
from clawpen.errors import ConfigError
from clawpen.logs.upkeep import Compressor
from clawpen.plan.build import HostFacts
from clawpen.sandbox.seccomp import default_policy
from clawpen.spec.loader import load_spec
from clawpen.spec.models import Bot


def policy(command: str = "sleep 300", **spec: Any) -> dict[str, Any]:
    bot = Bot.model_validate({"command": command.split(), **spec})
    return {"spec": bot.model_dump(mode="json", by_alias=True), "base_dir": "/srv/bots"}


def cur(p: dict[str, Any], *states: str) -> Current:
    return Current(policy_hash(p), p, states, tuple(s in ("running", "backoff") for s in states))


def want(p: dict[str, Any]) -> Wanted:
    return Wanted(policy_hash(p), p, p["spec"]["replicas"])


# ------------------------------------------------------------------------------ release_plan
def test_release_plan_sorts_every_bot_into_one_action_with_its_reason() -> None:
    same, old = policy(), policy("sleep 300", env={"A": "1"})
    new = policy("sleep 600", env={"A": "2"}, replicas=2)
    plan = release_plan(
        {
            "keep": cur(same, "running"),
            "edit": cur(old, "running"),
            "halted": cur(same, "crashloop"),
            "gone": cur(same, "running", "running"),
        },
        {"keep": want(same), "edit": want(new), "halted": want(same), "fresh": want(same)},
    )
    assert [(c.bot, c.action, c.replicas, c.why) for c in plan.changes] == [
        ("edit", "recreate", (0, 1), "changed: command, env.A, replicas"),
        ("fresh", "create", (0,), "new in the spec"),
        ("gone", "remove", (0, 1), "not in the spec any more"),
        ("halted", "start", (0,), "not running (crashloop)"),
        ("keep", "unchanged", (), "running, unchanged"),
    ]
    assert plan.names("recreate") == ["edit"] and not plan.empty
    as_dict = plan.as_dict()
    assert as_dict["create"] == ["fresh"] and as_dict["remove"] == ["gone"]
    assert as_dict["changes"][0] == {
        "bot": "edit",
        "action": "recreate",
        "replicas": [0, 1],
        "why": "changed: command, env.A, replicas",
    }


def test_release_plan_of_an_unchanged_spec_changes_nothing() -> None:
    p = policy()
    plan = release_plan({"a": cur(p, "running", "exited")}, {"a": want(policy())})
    assert plan.empty and plan.changes[0].why == "running, unchanged (1 of 2 replicas supervised)"
    # a moved spec file is a change of its own, and a bot with no instances is "stopped"
    moved = {**p, "base_dir": "/elsewhere"}
    assert release_plan({"a": cur(p)}, {"a": want(moved)}).changes[0].why == "changed: the spec's folder"
    assert release_plan({"a": cur(p)}, {"a": want(p)}).changes[0].why == "not running (stopped)"


def test_changed_fields_names_nested_keys_and_caps_the_why() -> None:
    old, new = {"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 1, "c": 3}, "e": 1}
    assert changed_fields(old, new) == ["a.c", "d", "e"]
    many = {f"K{i}": str(i) for i in range(9)}
    plan = release_plan({"x": cur(policy())}, {"x": want(policy(env=many))})
    assert plan.changes[0].why.endswith("env.K5 and 3 more"), plan.changes[0].why


# ---------------------------------------------------------------------------- the tier field
def test_the_tier_field_left_out_keeps_the_stored_policy_hash_of_earlier_releases() -> None:
    # computed with clawpen at a018313 (before this field was read by the daemon) for this bot
    stored_before = "bd136503dffa3e3b"
    assert policy_hash(policy(replicas=2)) == stored_before
    assert policy_hash(policy(replicas=2, tier="sandbox")) == stored_before


@pytest.mark.parametrize(
    ("tier", "what"), [("vmm", "there is no tier 'vmm'"), ("docker", "there is no tier 'docker'")]
)
def test_a_tier_other_than_sandbox_container_or_vm_is_refused_naming_them(
    tmp_path: Path, tier: str, what: str
) -> None:
    spec = tmp_path / "clawpen.toml"
    spec.write_text(f'[bots.a]\ncommand = ["true"]\ntier = "{tier}"\n')
    with pytest.raises(ConfigError) as err:
        load_spec(spec)
    assert err.value.what == what and err.value.where == f"{spec}:3 bots.a.tier"
    assert 'tier = "vm" (a QEMU virtual machine)' in (err.value.hint or "")
    spec.write_text('[bots.a]\ncommand = ["true"]\ntier = "sandbox"\n')  # the positive control
    assert load_spec(spec).spec.bots["a"].tier == "sandbox"


# ---------------------------------------------------------------------- op_up on a fake tier
class FakeDaemon:
    def __init__(self, tmp: Path) -> None:
        self.loop = VirtualLoop()
        self.tier = FakeTier(self.loop)
        self.compressor = Compressor()
        store = Store(tmp / "state" / "clawpen.db", records=tmp / "state" / "run")
        self.state = tmp / "state"

        def services(daemon: Daemon) -> Services:
            return Services(
                tiers={"sandbox": self.tier},
                cgroups=lambda: None,
                store=store,
                state_dir=self.state,
                logs_dir=self.state / "logs",
                run_dir=self.state / "run",
                host=HostFacts.probe(),
                seccomp=default_policy(),
                clock=self.loop.now,
                record=daemon.record,
                bpf=lambda: b"\0" * 8,
                compressor=self.compressor,
                secrets=lambda names: {},
                note=daemon.note,
            )

        self.daemon = self.loop.run_until_complete(self._make(store, services))
        self.spec = tmp / "bots" / "clawpen.toml"
        self.spec.parent.mkdir()

    @staticmethod
    async def _make(store: Store, services: Any) -> Daemon:
        return Daemon(store, services)

    def up(self, text: str, **args: Any) -> dict[str, Any]:
        self.spec.write_text(text)
        result: dict[str, Any] = self.loop.run_until_complete(
            op_up(self.daemon, {"file": str(self.spec), "wait": True, **args}, None)
        )
        return result

    def pids(self) -> dict[str, list[int]]:
        running = self.tier.running()
        return {n: [s.pid for s in running if s.plan.bot == n] for n in ("web", "db", "old", "new")}

    def close(self) -> None:
        self.tier.close()

        async def end() -> None:
            await self.daemon.shutdown()

        self.loop.run_until_complete(end())
        self.loop.close()
        self.daemon.store.close()
        self.compressor.close(timeout=5)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    made = FakeDaemon(tmp_path)
    yield made
    made.close()


SPEC = """
[bots.web]
command = ["web"]
replicas = 2

[bots.db]
command = ["db"]

[bots.old]
command = ["old"]
"""
CHANGED = """
[bots.web]
command = ["web", "--v2"]
replicas = 2

[bots.db]
command = ["db"]

[bots.new]
command = ["new"]
"""


def test_up_applies_the_release_plan_and_a_dry_run_only_shows_it(fake: FakeDaemon) -> None:
    first = fake.up(SPEC)
    assert first["create"] == ["db", "old", "web"] and first["wait"]["ok"], first
    before = fake.pids()
    assert [len(before[n]) for n in ("web", "db", "old")] == [2, 1, 1]
    releases = fake.daemon.store.releases(10)

    dry = fake.up(CHANGED, dry_run=True)
    assert dry["dry_run"] and {c["bot"]: (c["action"], c["why"]) for c in dry["changes"]} == {
        "db": ("unchanged", "running, unchanged"),
        "new": ("create", "new in the spec"),
        "old": ("remove", "not in the spec any more"),
        "web": ("recreate", "changed: command"),
    }
    assert fake.pids() == before and fake.daemon.store.releases(10) == releases  # nothing applied
    assert sorted(fake.daemon.store.bots()) == ["db", "old", "web"]

    applied = fake.up(CHANGED)
    assert applied["changes"] == dry["changes"] and applied["wait"]["ok"]
    after = fake.pids()
    assert after["db"] == before["db"]  # kept: the same sandbox
    assert len(after["web"]) == 2 and not set(after["web"]) & set(before["web"])  # recreated
    assert after["old"] == [] and len(after["new"]) == 1
    assert sorted(fake.daemon.store.bots()) == ["db", "new", "web"]
    assert fake.up(CHANGED, dry_run=True)["changes"] == [
        {"bot": n, "action": "unchanged", "replicas": [], "why": "running, unchanged"}
        for n in ("db", "new", "web")
    ]


def test_a_partial_up_plans_only_the_bots_it_names(fake: FakeDaemon) -> None:
    fake.up(SPEC)
    plan = fake.up(CHANGED, dry_run=True, bots=["web"])
    assert [(c["bot"], c["action"]) for c in plan["changes"]] == [("web", "recreate")]
