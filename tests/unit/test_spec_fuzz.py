"""Any spec text gives a valid plan for every bot or a clear error with exit 2, never a traceback.

Hypothesis writes TOML documents over the spec's own JSON Schema (``Spec.model_json_schema()``):
for each key a good example, a value of the schema's type, or a nasty one (wrong type, huge,
negative, nan/inf, NUL, newline, 100 KiB strings, deep nesting), plus unknown keys; some
documents are then cut or sprinkled with stray bytes. Each is loaded with the real loader and
every bot is planned with fixed host facts, as ``clawpen plan`` does. A handful of nasty files
also go through ``python -m clawpen plan -f`` in a subprocess: exit 2, no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from clawpen.errors import ClawpenError
from clawpen.plan.build import HostFacts, build_plan
from clawpen.plan.model import Identity, SeccompPolicy
from clawpen.spec.loader import parse_spec_text
from spec_gen import SWEEP_PATHS, SWEEP_VALUES, documents, to_toml, with_value

HOST = HostFacts(
    cpu_count=4,
    system_dirs=(("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/sbin", "usr/sbin")),
    etc_entries=("ld.so.cache", "ssl/certs"),
)
SECCOMP = SeccompPolicy(errno_syscalls=("mount",))

# ----------------------------------------------------------------------------- the property


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    for sub in ("ws", "ro", "rw", "data"):
        (path / sub).mkdir()
    return path


def _check(text: str, folder: Path) -> bool:
    """True when every bot was planned, False after a clear error; anything else fails."""
    try:
        loaded = parse_spec_text(text, folder / "clawpen.toml")
        for name, bot in loaded.spec.bots.items():
            policy = bot.to_policy(name, str(loaded.base_dir))
            ident = Identity(name=name, uid=1900000001, gid=1900000001)
            plan = build_plan(policy, ident, HOST, SECCOMP)
            assert plan.command and plan.command[0].strip()
            assert plan.rlimits.fsize is None or 0 < plan.rlimits.fsize <= 1 << 50
            tmp = next(m for m in plan.mounts if m.dest == "/tmp")
            assert tmp.size is not None and 0 < tmp.size <= 1 << 50
    except ClawpenError as err:
        assert err.exit_code == 2, (type(err), str(err))
        assert err.what.strip(), repr(err)
        assert "Traceback" not in str(err)
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=documents())
def test_any_spec_gives_a_plan_or_a_clear_error(text: str, spec_dir: Path) -> None:
    _check(text, spec_dir)


def test_the_generator_reaches_valid_specs(spec_dir: Path) -> None:
    """Positive control: the good examples alone make specs that load and plan."""
    text = to_toml(
        {
            "bots": {
                "scraper": {
                    "command": ["python3", "bot.py"],
                    "workspace": "./ws",
                    "resources": {"memory": "256M", "cpus": 0.5, "disk": "1G"},
                    "network": {"egress": ["api.openai.com:443"], "publish": ["127.0.0.1:18789:18789"]},
                    "health": {"http": "http://127.0.0.1:8000/healthz", "interval": "5s"},
                    "env": {"MODE": "prod"},
                }
            },
            "monitoring": {"prometheus_listen": "127.0.0.1:9464"},
            "gateway": {"subnet": "10.213.0.0/16", "dns_upstream": ["1.1.1.1"]},
        }
    )
    loaded = parse_spec_text(text, spec_dir / "clawpen.toml")
    policy = loaded.spec.bots["scraper"].to_policy("scraper", str(loaded.base_dir))
    plan = build_plan(policy, Identity(name="scraper", uid=1900000001, gid=1900000001), HOST, SECCOMP)
    assert plan.rlimits.fsize == 1 << 30


NASTY_FILES = {
    "deep-arrays.toml": "x = " + "[" * 100_000 + "]" * 100_000 + "\n",
    "deep-tables.toml": '[bots.a]\ncommand = ["a"]\nenv = ' + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
    "proc-root.toml": '[bots.a]\ncommand = ["a"]\nfilesystem.ro = ["/proc/1/root"]\n',
    "huge-memory.toml": '[bots.a]\ncommand = ["a"]\nresources.memory = 1e30\n',
    "nan-timeout.toml": '[bots.a]\ncommand = ["a"]\ntimeout = nan\n',
    "public-metrics.toml": '[monitoring]\nprometheus_listen = "0.0.0.0:9464"\n',
    "huge-env.toml": '[bots.a]\ncommand = ["a"]\nenv = { BIG = "' + "x" * 200_000 + '" }\n',
    "too-big.toml": "# " + "x" * (2 << 20) + "\n",
}


@pytest.mark.parametrize("name", sorted(NASTY_FILES))
def test_cli_plan_on_nasty_specs_exits_2_without_traceback(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(NASTY_FILES[name])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    env["CLAWPEN_HOME"] = str(tmp_path / "state")
    proc = subprocess.run(
        [sys.executable, "-m", "clawpen", "plan", "-f", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
    assert "hint: " in proc.stderr


def test_cli_invalid_utf8_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "clawpen.toml"
    path.write_bytes(b'[bots.a]\ncommand = ["\xff"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "clawpen", "plan", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "not valid UTF-8" in proc.stderr and f"{path}:2:" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- every field, every nasty value


def test_every_field_meets_every_nasty_value(spec_dir: Path) -> None:
    """Each leaf key of the schema (about a hundred), set in turn to each nasty value."""
    assert len(SWEEP_PATHS) > 80
    planned = 0
    for path in SWEEP_PATHS:
        for value in SWEEP_VALUES:
            text = to_toml(with_value(path, value))
            try:
                planned += _check(text, spec_dir)
            except AssertionError as err:
                raise AssertionError(f"{'.'.join(path)} = {value!r}: {err}") from None
    assert planned > len(SWEEP_PATHS)  # positive control: the base spec, and sane values, do load
