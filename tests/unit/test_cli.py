"""The command line as a person meets it: errors say what, where and how to fix, exit 2, no
traceback, and nothing is started."""

import json
import os
import subprocess
import sys
import textwrap

import pytest


def clawpen(*args, env_home, cwd=None):
    env = {**os.environ, "CLAWPEN_HOME": str(env_home)}
    return subprocess.run(
        [sys.executable, "-m", "clawpen", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["run", "--memory", "lots", "--", "true"], "(--memory)"),
        (["run", "--rw", "/etc", "--", "true"], "(--rw)"),
        (["run", "--cpus", "0", "--", "true"], "(--cpus)"),
        (["run", "--env", "NOVALUE", "--", "true"], "(--env)"),
        (["run"], "(clawpen run)"),
        (["run", "--bogus"], "clawpen run"),
        (["nosuchcommand"], "clawpen"),
    ],
)
def test_bad_flags_exit_2_with_hint_and_no_traceback(args, where, tmp_path):
    result = clawpen(*args, env_home=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ")
    assert where in result.stderr
    assert "\nhint: " in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_spec_names_file_and_line_and_starts_nothing(tmp_path):
    spec = tmp_path / "clawpen.toml"
    spec.write_text(
        textwrap.dedent("""
        [bots.a]
        command = ["touch", "/workspace/started"]
        workspace = "./ws"
        filesystem = { rw = ["/usr/local"] }
    """)
    )
    result = clawpen("run", "-f", str(spec), "a", env_home=tmp_path / "state")
    assert result.returncode == 2
    assert f"{spec}:5 bots.a.filesystem.rw" in result.stderr
    assert "refusing a writable mount of /usr/local" in result.stderr
    assert not (tmp_path / "ws").exists()
    assert not (tmp_path / "state").exists()


def test_unknown_bot_lists_known_ones(tmp_path):
    spec = tmp_path / "clawpen.toml"
    spec.write_text('[bots.alpha]\ncommand = ["true"]\n[bots.beta]\ncommand = ["true"]\n')
    result = clawpen("run", "-f", str(spec), "gamma", env_home=tmp_path)
    assert result.returncode == 2
    assert "known bots: alpha, beta" in result.stderr
    result = clawpen("run", "-f", str(spec), env_home=tmp_path)
    assert result.returncode == 2
    assert "name the one to run" in result.stderr


def test_plan_json_runs_nothing(tmp_path):
    result = clawpen(
        "plan", "--json", "--argv", "--memory", "256M", "--", "python3", "x.py", env_home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["cgroup"]["memory_max"] == 256 << 20
    assert plan["command"] == ["python3", "x.py"]
    assert plan["identity"]["uid"] >= 1_000_000
    assert plan["bwrap_argv"][0] == "bwrap"
    assert "--unshare-net" in plan["bwrap_argv"]


def test_plan_human_readable(tmp_path):
    result = clawpen("plan", "--cpus", "0.5", "--", "true", env_home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cpus 0.5" in result.stdout
    assert "remount-ro" in result.stdout


def test_schema_is_json(tmp_path):
    result = clawpen("schema", env_home=tmp_path)
    assert result.returncode == 0
    assert "bots" in json.loads(result.stdout)["properties"]


def test_debug_shows_traceback(tmp_path):
    result = clawpen("--debug", "run", "--memory", "lots", "--", "true", env_home=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_run_as_non_root_says_why(tmp_path, monkeypatch, capsys):
    from clawpen import cli

    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["run", "--", "true"]) == 1
    err = capsys.readouterr().err
    assert "needs root" in err and "hint: run clawpen as root" in err


def test_daemon_commands_as_non_root_say_why(tmp_path, monkeypatch, capsys):
    from clawpen import cli

    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["ps"]) == 1
    err = capsys.readouterr().err
    assert "need root" in err and "hint:" in err
    assert not (tmp_path / "daemon.log").exists()
