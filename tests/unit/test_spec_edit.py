"""`secrets add-to`'s in-place spec edit: the name lands in the bot's arrays, every comment and
line else stays byte for byte, and what cannot be edited safely is refused unchanged."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from clawpen.errors import ConfigError
from clawpen.spec.edit import add_secret
from clawpen.spec.loader import parse_spec_text

TEMPLATE = Path(__file__).parents[2] / "src/clawpen/init/templates/openclaw/clawpen.toml"


def _changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    return [(a, b) for a, b in zip(old.splitlines(), new.splitlines(), strict=True) if a != b]


def test_the_openclaw_template_gets_the_key_with_its_comments_kept(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    new = add_secret(text, "openclaw", "ANTHROPIC_API_KEY", env=True)
    bot = tomllib.loads(new)["bots"]["openclaw"]
    assert bot["secrets"] == ["OPENCLAW_GATEWAY_TOKEN", "ANTHROPIC_API_KEY"]
    assert bot["secret_env"] == ["OPENCLAW_GATEWAY_TOKEN", "ANTHROPIC_API_KEY"]
    changed = _changed_lines(text, new)  # same line count: only the two array lines differ
    assert len(changed) == 2 and all(a.split("=")[0] == b.split("=")[0] for a, b in changed)
    assert "# from the vault, at /run/secrets/ and as env var" in changed[0][1]  # its comment kept
    parse_spec_text(new, tmp_path / "clawpen.toml")  # still a valid spec
    # once is enough: a second add changes nothing
    assert add_secret(new, "openclaw", "ANTHROPIC_API_KEY", env=True) == new
    # without --env only `secrets` grows
    only = tomllib.loads(add_secret(text, "openclaw", "OPENAI_API_KEY", env=False))["bots"]["openclaw"]
    assert "OPENAI_API_KEY" in only["secrets"] and "OPENAI_API_KEY" not in only["secret_env"]


def test_missing_keys_multiline_arrays_and_other_bots() -> None:
    text = (
        "# top\n[bots.a]\ncommand = ['sleep', '1']  # a\n\n[bots.a.network]\negress = []\n\n"
        '[bots.b]\ncommand = ["true"]\nsecrets = [\n    "X",  # x\n]\n'
    )
    new = add_secret(text, "a", "TOKEN", env=True)
    data = tomllib.loads(new)
    assert data["bots"]["a"]["secrets"] == ["TOKEN"] and data["bots"]["a"]["secret_env"] == ["TOKEN"]
    assert data["bots"]["a"]["network"] == {"egress": []} and "secrets" not in data["bots"]["a"]["network"]
    assert data["bots"]["b"] == {"command": ["true"], "secrets": ["X"]}
    multi = add_secret(text, "b", "Y", env=False)
    assert tomllib.loads(multi)["bots"]["b"]["secrets"] == ["X", "Y"]
    assert '    "X",  # x\n    "Y",\n]' in multi


def test_what_cannot_be_edited_safely_is_refused() -> None:
    # an inline bot table is edited too (tomlkit), its text kept as it was around it
    inline = '# mine\nbots = { a = { command = ["true"] } }\n'
    edited = add_secret(inline, "a", "TOKEN", env=True)
    assert edited.startswith("# mine\n")
    assert tomllib.loads(edited)["bots"]["a"] == {
        "command": ["true"],
        "secrets": ["TOKEN"],
        "secret_env": ["TOKEN"],
    }
    with pytest.raises(ConfigError, match="no bot b"):
        add_secret(inline, "b", "TOKEN", env=False)
    not_array = '[bots.a]\ncommand = ["true"]\nsecrets = "X"\n'
    with pytest.raises(ConfigError, match="not written as an array"):
        add_secret(not_array, "a", "TOKEN", env=False)
