"""`resources.start_cpus` / `start_for` (issue 21's open ends, item 1): what loads, what is
refused (exit 2, the field named), the allowance as granted, and the policy hash of bots that
set none (unchanged, so existing bots are not restarted by an upgrade)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from test_net_limits import HASH_SPEC, HASHES_BEFORE, hashes

from clawpen.errors import ClawpenError
from clawpen.spec.loader import load_spec
from clawpen.spec.startcpu import START_FOR_DEFAULT, START_FOR_MAX, Allowance, allowance

BOT = '[bots.a]\ncommand = ["sleep", "60"]\n'


def load(tmp_path: Path, resources: str) -> object:
    path = tmp_path / "clawpen.toml"
    path.write_text(BOT + textwrap.dedent(resources))
    return load_spec(path).spec.bots["a"].resources


def test_the_fields_load_and_unset_they_are_none(tmp_path: Path) -> None:
    res = load(tmp_path, 'resources = { cpus = 1, start_cpus = 2, start_for = "90s" }')
    assert (res.cpus, res.start_cpus, res.start_for) == (1.0, 2.0, 90.0)  # type: ignore[attr-defined]
    res = load(tmp_path, "resources = { cpus = 1 }")
    assert (res.start_cpus, res.start_for) == (None, None)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("resources", "said", "hint"),
    [
        ("resources = { cpus = 2, start_cpus = 2 }", "start_cpus = 2 is not above cpus = 2", "more than 2"),
        ("resources = { cpus = 1, start_cpus = 0.5 }", "is not above cpus = 1", "more than 1"),
        ('resources = { cpus = 1, start_for = "30s" }', "set without start_cpus", "set start_cpus"),
        ('resources = { cpus = 1, start_cpus = 2, start_for = "11m" }', "longer than 600s", '"10m"'),
        ('resources = { cpus = 1, start_cpus = 2, start_for = "0s" }', "", ""),
        ('resources = { cpus = 1, start_cpus = "lots" }', "not a CPU count", ""),
    ],
)
def test_bad_values_are_refused_with_the_field_and_a_hint(
    tmp_path: Path, resources: str, said: str, hint: str
) -> None:
    with pytest.raises(ClawpenError) as err:
        load(tmp_path, resources)
    assert err.value.exit_code == 2
    assert "bots.a.resources" in (err.value.where or ""), err.value.where
    assert said in err.value.what, err.value.what
    assert hint in (err.value.hint or ""), err.value.hint


def test_the_allowance_is_capped_at_the_host_cores_and_its_length_depends_on_a_health_check() -> None:
    def grant(cpus: float, start: float | None, start_for: float | None, cores: int, health: bool) -> object:
        return allowance(cpus, start, start_for, host_cores=cores, has_health=health)

    assert grant(1.0, 2.0, None, 4, False) == Allowance(2.0, 1.0, START_FOR_DEFAULT, False)
    assert grant(1.0, 2.0, None, 4, True) == Allowance(2.0, 1.0, START_FOR_MAX, True)
    assert grant(1.0, 8.0, 30.0, 4, True) == Allowance(4.0, 1.0, 30.0, True)
    # on a 1-vCPU host, start_cpus = 2 over cpus = 1 grants nothing (no error: an allowance)
    assert grant(1.0, 2.0, None, 1, True) is None
    assert grant(0.5, 2.0, None, 1, True) == Allowance(1.0, 0.5, START_FOR_MAX, True)
    assert grant(1.0, None, None, 4, True) is None


def test_a_bot_without_the_allowance_keeps_its_policy_hash_and_one_with_it_changes() -> None:
    assert hashes(HASH_SPEC) == HASHES_BEFORE
    end = 'resources = { cpus = 0.25, memory = "64M", pids = 16 }'
    assert end in HASH_SPEC
    with_it = hashes(HASH_SPEC.replace(end, end[:-2] + ", start_cpus = 1 }"))
    assert with_it["fetcher"] != HASHES_BEFORE["fetcher"]  # part of the policy: a change restarts
    assert {k: v for k, v in with_it.items() if k != "fetcher"} == {
        k: v for k, v in HASHES_BEFORE.items() if k != "fetcher"
    }
    longer = hashes(HASH_SPEC.replace(end, end[:-2] + ', start_cpus = 1, start_for = "2m" }'))
    assert longer["fetcher"] not in (with_it["fetcher"], HASHES_BEFORE["fetcher"])
