import json
import textwrap

import pytest

from clawpen.errors import ConfigError, PolicyError
from clawpen.spec.loader import key_lines, load_spec, locate
from clawpen.spec.models import json_schema


def write(tmp_path, text):
    path = tmp_path / "clawpen.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_spec_loads_with_defaults(tmp_path):
    path = write(
        tmp_path,
        """
        [bots.scraper]
        command = ["python3", "main.py"]
        workspace = "./scraper"
        resources = { cpus = 0.5, memory = "256M" }
    """,
    )
    loaded = load_spec(path)
    bot = loaded.spec.bots["scraper"]
    assert bot.resources.memory == 256 << 20
    assert bot.resources.pids == 256
    assert bot.network.egress == [] and bot.network.publish == [] and bot.network.isolated
    policy = bot.to_policy("scraper", str(loaded.base_dir))
    assert policy.workspace == str(tmp_path / "scraper")
    assert policy.cpus == 0.5


def test_bad_size_names_file_line_and_key(tmp_path):
    path = write(
        tmp_path,
        """
        [bots.gateway]
        command = ["openclaw", "gateway", "run"]

        [bots.gateway.resources]
        cpus = 1
        memory = "lots"
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert err.value.where == f"{path}:7 bots.gateway.resources.memory"
    assert "'lots' is not a size" in err.value.what
    assert "512M" in (err.value.hint or "")


def test_inline_table_key_is_located(tmp_path):
    path = write(
        tmp_path,
        """
        [bots.a]
        command = ["true"]
        resources = { cpus = 1, pids = 0 }
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert err.value.where == f"{path}:4 bots.a.resources.pids"


def test_writable_etc_is_a_policy_error_with_reason(tmp_path):
    path = write(
        tmp_path,
        """
        [bots.evil]
        command = ["sh"]
        filesystem = { rw = ["/etc"] }
    """,
    )
    with pytest.raises(PolicyError) as err:
        load_spec(path)
    assert "refusing a writable mount of /etc" in err.value.what
    assert err.value.where.startswith(f"{path}:4 bots.evil.filesystem.rw")
    assert err.value.exit_code == 2


def test_unknown_key_gets_spelling_hint(tmp_path):
    path = write(
        tmp_path,
        """
        [bots.a]
        command = ["true"]
        memroy = "1G"
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert "memroy" in err.value.where
    assert "spelling" in (err.value.hint or "")


def test_toml_syntax_error_has_line(tmp_path):
    path = write(
        tmp_path,
        """
        [bots.a]
        command = ["true"
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert err.value.where.startswith(f"{path}:")
    assert "not valid TOML" in err.value.what
    path = write(
        tmp_path,
        """
        [bots.a]
        command = = 1
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert err.value.where == f"{path}:3:11"


def test_missing_file_hint(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_spec(tmp_path / "nope.toml")
    assert "clawpen init" in (err.value.hint or "")


def test_several_problems_are_all_listed(tmp_path):
    path = write(
        tmp_path,
        """
        [bots.a]
        command = []
        tier = "vmm"
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert "\n  - " in err.value.what


def test_bad_bot_name(tmp_path):
    path = write(
        tmp_path,
        """
        [bots.Bad_Name]
        command = ["true"]
    """,
    )
    with pytest.raises(PolicyError):
        load_spec(path)


def test_key_lines_handles_dotted_and_quoted_keys():
    text = '[bots."my-bot"]\nresources.memory = "1G"\n[bots.b.health]\nhttp = "x"\n'
    lines = key_lines(text)
    assert lines[("bots", "my-bot", "resources", "memory")] == 2
    assert locate(text, ("bots", "b", "health", "interval")) == 3


def test_schema_is_json_and_describes_bots():
    schema = json_schema()
    text = json.dumps(schema)
    assert "bots" in schema["properties"]
    assert "workspace" in text and "512M" in text
