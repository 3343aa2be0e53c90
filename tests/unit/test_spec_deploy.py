"""``[deploy]`` (issue 15, automatic rollback): its bounds, its defaults, and that it is spec-wide:
it changes no bot's policy hash (so turning it on restarts nothing)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from clawpen.daemon.release_diff import bot_policy
from clawpen.daemon.store import policy_hash
from clawpen.errors import ConfigError
from clawpen.spec.loader import load_spec

BOT = '[bots.a]\ncommand = ["python3", "bot.py"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clawpen.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_off_and_two_minutes(tmp_path: Path) -> None:
    deploy = load_spec(write(tmp_path, BOT)).spec.deploy
    assert deploy.auto_rollback is False and deploy.health_window == 120.0


@pytest.mark.parametrize(("raw", "seconds"), [('"5s"', 5.0), ('"2m"', 120.0), ('"1h"', 3600.0), ("30", 30.0)])
def test_windows_in_bounds_load(tmp_path: Path, raw: str, seconds: float) -> None:
    text = f"[deploy]\nauto_rollback = true\nhealth_window = {raw}\n{BOT}"
    deploy = load_spec(write(tmp_path, text)).spec.deploy
    assert deploy.auto_rollback is True and deploy.health_window == seconds


@pytest.mark.parametrize("raw", ['"4s"', '"61m"', "0", "-5", '"soon"', '"2d"', "true"])
def test_windows_out_of_bounds_are_refused(tmp_path: Path, raw: str) -> None:
    path = write(tmp_path, f"[deploy]\nhealth_window = {raw}\n{BOT}")
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert err.value.exit_code == 2 and err.value.hint
    assert "deploy.health_window" in (err.value.where or ""), err.value.where
    assert str(path) in (err.value.where or "")


def test_unknown_keys_and_bad_types_are_refused(tmp_path: Path) -> None:
    for text, key in (
        (f"[deploy]\nauto_rolback = true\n{BOT}", "deploy.auto_rolback"),
        (f'[deploy]\nauto_rollback = "yes please"\n{BOT}', "deploy.auto_rollback"),
    ):
        with pytest.raises(ConfigError) as err:
            load_spec(write(tmp_path, text))
        assert key in (err.value.where or ""), err.value.where


def test_deploy_changes_no_bot_policy_hash(tmp_path: Path) -> None:
    plain = load_spec(write(tmp_path, BOT))
    before = policy_hash(bot_policy(plain, "a"))
    on = load_spec(write(tmp_path, f'[deploy]\nauto_rollback = true\nhealth_window = "5s"\n{BOT}'))
    assert on.spec.deploy.auto_rollback
    assert policy_hash(bot_policy(on, "a")) == before
    # positive control: a bot field does change it
    other = load_spec(write(tmp_path, BOT.replace("bot.py", "other.py")))
    assert policy_hash(bot_policy(other, "a")) != before
