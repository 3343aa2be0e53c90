"""`clawpen init` templates and the build section of the spec: every template loads, the
openclaw template says what the issue asks, writing is all or nothing, build rules hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clawpen.cli import main
from clawpen.daemon.build_steps import cache_key, step_policy, with_build
from clawpen.errors import UsageError
from clawpen.init import TEMPLATES, template_files, write_template
from clawpen.spec.build import BuildSpec
from clawpen.spec.loader import load_spec
from clawpen.spec.units import parse_duration

TEMPLATE_NAMES = sorted(TEMPLATES)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_template_loads_and_plans(name: str, tmp_path: Path) -> None:
    written = write_template(name, tmp_path / name)
    assert (tmp_path / name / "clawpen.toml") in written
    loaded = load_spec(tmp_path / name / "clawpen.toml")
    assert loaded.spec.bots, name
    for bot_name, bot in loaded.spec.bots.items():
        policy = bot.to_policy(bot_name, str(loaded.base_dir))
        assert policy.memory and policy.pids and bot.health is not None, (name, bot_name)
        # the bot folder is mounted read-only and exists
        for src, _dest in policy.ro:
            assert os.path.isdir(src), src
    # shell scripts are executable
    for path in written:
        if path.suffix == ".sh":
            assert os.access(path, os.X_OK), path


def test_openclaw_template_follows_the_issue(tmp_path: Path) -> None:
    write_template("openclaw", tmp_path)
    text = (tmp_path / "clawpen.toml").read_text()
    bot = load_spec(tmp_path / "clawpen.toml").spec.bots["openclaw"]
    assert bot.network.publish == ["127.0.0.1:18789:18789"]
    assert bot.resources.memory == 2 << 30
    assert bot.memory_pressure is not None
    assert bot.health is not None and bot.health.http == "http://127.0.0.1:18789/readyz"
    assert bot.health.start_period >= 90
    assert bot.secrets == ["OPENCLAW_GATEWAY_TOKEN"] and bot.secret_env == ["OPENCLAW_GATEWAY_TOKEN"]
    # providers and channels are there, commented out: the running gateway reaches nothing
    assert bot.network.egress == []
    for host in ("api.anthropic.com:443", "api.openai.com:443", "api.telegram.org:443", "discord.com:443"):
        assert f'# "{host}"' in text or f'"{host}"' in text.split("# Chat channels")[1], host
    assert bot.build is not None
    node, claw = bot.build.steps
    assert node[:2] == ["npm", "install"] and node[-1] == "node@24"
    assert claw[:2] == ["npm", "install"] and claw[-1] == "openclaw@latest"
    # openclaw's install scripts must find Node 24 first
    assert bot.build.env["PATH"].startswith("/opt/bot/node_modules/.bin:")
    assert bot.build.egress == ["registry.npmjs.org:443"]
    assert bot.build.mount == "/opt/bot"
    start = (tmp_path / "openclaw" / "start.sh").read_text()
    code = [line for line in start.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "config set" in line]  # a file written once, not a call per key
    assert "--bind loopback" in start and "--port 18789" in start
    assert "OPENCLAW_GATEWAY_TOKEN" not in start.split("exec ")[-1]  # never on the argv


def test_openclaw_start_writes_the_config_once(tmp_path: Path) -> None:
    """start.sh, pointed at a stand-in openclaw.mjs that prints its argv: the first start
    writes the config file (valid JSON, the owner's only); a later start keeps a user's edit."""
    write_template("openclaw", tmp_path / "t")
    fake = tmp_path / "opt" / "node_modules" / "openclaw" / "openclaw.mjs"
    fake.parent.mkdir(parents=True)
    fake.write_text("console.log(JSON.stringify(process.argv.slice(2)))\n")
    script = tmp_path / "start.sh"
    text = (tmp_path / "t" / "openclaw" / "start.sh").read_text()
    script.write_text(text.replace("/opt/bot", str(tmp_path / "opt")))
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}

    def start() -> str:
        run = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=True)
        return run.stdout

    argv = start()
    assert argv.strip() == '["gateway","run","--bind","loopback","--port","18789","--auth","token"]'
    config = home / ".openclaw" / "openclaw.json"
    conf = json.loads(config.read_text())
    assert conf == {
        "update": {"checkOnStart": False},
        "models": {"catalogRefresh": {"enabled": False}},
        "gateway": {"mode": "local"},
        "logging": {"file": f"{home}/.openclaw/logs/openclaw.log", "maxFileBytes": 10485760},
    }
    assert config.stat().st_mode & 0o777 == 0o600 and (home / ".openclaw").stat().st_mode & 0o777 == 0o700
    assert [p.name for p in config.parent.iterdir()] == ["openclaw.json"]  # no temporary left
    config.write_text('{"gateway": {"mode": "local"}, "logging": {"maxFileBytes": 1}}\n')
    start()
    assert json.loads(config.read_text()) == {"gateway": {"mode": "local"}, "logging": {"maxFileBytes": 1}}
    config.unlink()  # positive control: without the file, the next start writes it again
    start()
    assert json.loads(config.read_text()) == conf


def test_existing_files_refused_then_forced(tmp_path: Path) -> None:
    (tmp_path / "clawpen.toml").write_text("# mine\n")
    with pytest.raises(UsageError, match="already exists"):
        write_template("shell", tmp_path)
    assert (tmp_path / "clawpen.toml").read_text() == "# mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clawpen.toml"]  # nothing half-written
    write_template("shell", tmp_path, force=True)
    assert (tmp_path / "clawpen.toml").read_bytes() == template_files("shell")["clawpen.toml"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".clawpen-init")]


def test_cli_init_without_template_and_tty_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clawpen", "init", str(tmp_path)],
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "--template" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
    assert main(["init", "--template", "nope", str(tmp_path)]) == 2
    assert main(["init", "--template", "python", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "pybot" / "requirements.txt").exists()


def _spec(tmp_path: Path, build: str) -> Path:
    (tmp_path / "bot").mkdir(exist_ok=True)
    (tmp_path / "bot" / "req.txt").write_text("a\n")
    path = tmp_path / "clawpen.toml"
    path.write_text(
        f'[bots.b]\ncommand = ["true"]\nfilesystem = {{ ro = ["./bot:/app"] }}\n[bots.b.build]\n{build}\n'
    )
    return path


@pytest.mark.parametrize(
    ("build", "message"),
    [
        ("steps = []", "at least 1"),
        ('steps = [[""]]', "empty"),
        ('steps = [["x"]]\nmount = "/usr/local"', "not allowed"),
        ('steps = [["x"]]\nmount = "relative"', "not allowed"),
        ('steps = [["x"]]\ninputs = ["./missing.txt"]', "does not exist"),
        ('steps = [["x"]]\nenv = { "1BAD" = "x" }', "1BAD"),
        ('steps = [["x"]]\ntimeout = "soon"', "soon"),
        ('steps = [["x"]]\nwhat = 1', "what"),
    ],
)
def test_bad_build_sections_do_not_load(tmp_path: Path, build: str, message: str) -> None:
    from clawpen.errors import ClawpenError

    with pytest.raises(ClawpenError) as err:
        load_spec(_spec(tmp_path, build))
    assert message in str(err.value) + str(err.value.hint), (str(err.value), err.value.where)


def test_cache_key_follows_inputs_and_steps(tmp_path: Path) -> None:
    loaded = load_spec(
        _spec(tmp_path, 'steps = [["sh", "-c", "x"]]\ninputs = ["./bot/req.txt"]\ntimeout = "5m"')
    )
    build = loaded.spec.bots["b"].build
    assert isinstance(build, BuildSpec) and build.timeout == parse_duration("5m")
    key = cache_key(build, str(tmp_path))
    assert cache_key(build, str(tmp_path)) == key
    (tmp_path / "bot" / "req.txt").write_text("b\n")
    assert cache_key(build, str(tmp_path)) != key
    other = build.model_copy(update={"steps": [["sh", "-c", "y"]]})
    assert cache_key(other, str(tmp_path)) != cache_key(build, str(tmp_path))
    # the timeout is not part of the output
    assert cache_key(build.model_copy(update={"timeout": 1.0}), str(tmp_path)) == cache_key(
        build, str(tmp_path)
    )


def test_build_policy_and_runtime_mount(tmp_path: Path) -> None:
    text = 'steps = [["sh", "-c", "x"]]\negress = ["pypi.org:443"]\nenv = { PIP_X = "1" }\nmemory = "1G"'
    loaded = load_spec(_spec(tmp_path, text))
    bot = loaded.spec.bots["b"]
    staging, cache = tmp_path / "stage", tmp_path / "cache"
    pol = step_policy("b", bot, str(tmp_path), staging, cache)
    assert pol.workspace is None and pol.secrets == () and pol.publish == ()
    assert pol.egress == ("pypi.org:443",) and pol.memory == 1 << 30
    assert (str(staging), "/opt/bot") in pol.rw and (str(cache), "/build-cache") in pol.rw
    assert ("PIP_X", "1") in pol.env
    from clawpen.daemon.build_steps import BuildResult

    out = tmp_path / "out"
    out.mkdir()
    built = with_build(bot, BuildResult("b", "k", out, False, 0.0))
    runtime = built.to_policy("b", str(tmp_path))
    assert (str(out), "/opt/bot") in runtime.ro and runtime.egress == ()
