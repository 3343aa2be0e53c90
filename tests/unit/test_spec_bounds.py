"""Every spec field and ``clawpen run`` flag has sane bounds with a clear error (exit 2).

Each refusal names the file:line and key path (or the flag) and says how to fix it; each has a
positive control that a sane value next to it still loads.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from clawpen.cli import main
from clawpen.errors import ClawpenError, ConfigError, UsageError
from clawpen.spec import bounds, listen, units
from clawpen.spec.loader import MAX_SPEC_BYTES, load_spec
from clawpen.spec.policy import DEFAULT_DISK, BotPolicy, policy_from_flags

BOT = '[bots.a]\ncommand = ["python3", "bot.py"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clawpen.toml"
    path.write_text(textwrap.dedent(text))
    return path


def refused(tmp_path: Path, text: str) -> ClawpenError:
    path = write(tmp_path, text)
    with pytest.raises(ClawpenError) as err:
        load_spec(path)
    assert err.value.exit_code == 2
    assert err.value.what and err.value.hint, err.value
    assert str(path) in (err.value.where or "")
    return err.value


def loads(tmp_path: Path, text: str) -> BotPolicy:
    loaded = load_spec(write(tmp_path, text))
    name, bot = next(iter(loaded.spec.bots.items()))
    return bot.to_policy(name, str(loaded.base_dir))


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("1e30", "larger than 1 PiB"),
        ('"2P"', "larger than 1 PiB"),
        ("nan", "not a finite number"),
        ("inf", "not a finite number"),
        ("-1", "negative"),
        ("0", "zero"),
        ('"1.5"', "whole number of bytes"),
        ("1.5", "whole number of bytes"),
        ("[1]", "not a size"),
    ],
)
def test_memory_bounds(tmp_path: Path, value: str, said: str) -> None:
    err = refused(tmp_path, f"{BOT}resources.memory = {value}\n")
    assert said in err.what
    assert err.where == f"{tmp_path / 'clawpen.toml'}:3 bots.a.resources.memory"
    assert loads(tmp_path, f'{BOT}resources.memory = "1P"\n').memory == 1 << 50  # the bound itself


@pytest.mark.parametrize("field", ["disk", "tmp"])
@pytest.mark.parametrize("value", ["0", '"1k"', "nan", "1e30", '"-5M"'])
def test_disk_and_tmp_bounds(tmp_path: Path, field: str, value: str) -> None:
    err = refused(tmp_path, f"{BOT}resources.{field} = {value}\n")
    assert f"bots.a.resources.{field}" in (err.where or "")


def test_every_bot_has_a_disk_cap_by_default(tmp_path: Path) -> None:
    policy = loads(tmp_path, BOT)
    assert policy.disk == DEFAULT_DISK == 10 << 30
    assert BotPolicy(name="x", command=("true",)).disk == DEFAULT_DISK
    assert policy_from_flags(["true"], base_dir=str(tmp_path)).disk == DEFAULT_DISK
    # an explicit opt-out, for a bot that really needs it
    assert loads(tmp_path, f'{BOT}resources.disk = "unlimited"\n').disk is None
    assert policy_from_flags(["true"], base_dir=str(tmp_path), disk="unlimited").disk is None


# ----------------------------------------------------------------------------- durations and counts


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("timeout", "0", "zero"),
        ("timeout", "nan", "not a finite number"),
        ("timeout", "inf", "not a finite number"),
        ("timeout", '"400d"', "longer than a year"),
        ("timeout", "-3", "negative"),
        ("restart.window", "0", "zero"),
        ("restart.backoff_initial", '"0s"', "zero"),
        ("restart.backoff_initial", '"2m"', "longer than backoff_max"),
        ("health.interval", "0", "zero"),
        ("memory_pressure.for", "1e300", "longer than a year"),
    ],
)
def test_duration_bounds(tmp_path: Path, key: str, value: str, said: str) -> None:
    extra = 'health.cmd = ["true"]\n' if key.startswith("health") else ""
    err = refused(tmp_path, f"{BOT}{extra}{key} = {value}\n")
    assert said in err.what, err.what
    assert loads(tmp_path, f'{BOT}{extra}{key} = "9s"\n') is not None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("resources.cpus", "nan"),
        ("resources.cpus", "0"),
        ("resources.cpus", "-1"),
        ("resources.cpus", "1e400"),
        ("resources.cpus", "true"),
        ("resources.pids", "0"),
        ("resources.pids", "1e30"),
        ("resources.nofile", "9223372036854775807"),
        ("replicas", "0"),
        ("replicas", "65"),
        ("restart.max_restarts", "1000000"),
        ("network.bandwidth", "1e400"),
        ("network.bandwidth", '"99999999999999999999999999999mbit"'),
    ],
)
def test_number_bounds(tmp_path: Path, key: str, value: str) -> None:
    err = refused(tmp_path, f"{BOT}{key} = {value}\n")
    assert f"bots.a.{key}" in (err.where or "")


def test_bot_count_is_capped(tmp_path: Path) -> None:
    many = "".join(f'[bots.b{i}]\ncommand = ["true"]\n' for i in range(bounds.MAX_BOTS + 1))
    err = refused(tmp_path, many)
    assert "at most 1000" in err.what
    few = "".join(f'[bots.b{i}]\ncommand = ["true"]\n' for i in range(20))
    assert len(load_spec(write(tmp_path, few)).spec.bots) == 20


# ----------------------------------------------------------------------------- env, argv, names


def test_env_bounds(tmp_path: Path) -> None:
    big = "x" * (130 << 10)
    assert "128 KiB" in refused(tmp_path, f'{BOT}env = {{ BIG = "{big}" }}\n').what
    many = ", ".join(f'V{i} = "{"y" * (100 << 10)}"' for i in range(12))
    assert "1 MiB" in refused(tmp_path, f"{BOT}env = {{ {many} }}\n").what
    assert "NUL" in refused(tmp_path, f'{BOT}env = {{ A = "a\\u0000b" }}\n').what
    for name in ('"A=B"', '"1A"', '"A\\nB"', '"A\\n"', '""'):
        assert "not valid" in refused(tmp_path, f'{BOT}env = {{ {name} = "v" }}\n').what
    assert loads(tmp_path, f'{BOT}env = {{ OK = "{"z" * (100 << 10)}" }}\n').env == (
        ("OK", "z" * (100 << 10)),
    )
    with pytest.raises(UsageError, match="128 KiB"):
        policy_from_flags(["true"], base_dir=str(tmp_path), env=[f"BIG={big}"])
    with pytest.raises(UsageError, match="not valid"):
        policy_from_flags(["true"], base_dir=str(tmp_path), env=["A\n=1"])


def test_command_bounds(tmp_path: Path) -> None:
    assert "empty" in refused(tmp_path, '[bots.a]\ncommand = [" "]\n').what
    assert "NUL" in refused(tmp_path, '[bots.a]\ncommand = ["a", "b\\u0000"]\n').what
    args = ", ".join(['"x"'] * (bounds.MAX_ARGS + 1))
    assert "arguments" in refused(tmp_path, f"[bots.a]\ncommand = [{args}]\n").what
    assert "256 KiB" in refused(tmp_path, f'[bots.a]\ncommand = ["a", "{"x" * (300 << 10)}"]\n').what
    with pytest.raises(UsageError, match="arguments"):
        policy_from_flags(["x"] * (bounds.MAX_ARGS + 1), base_dir=str(tmp_path))


@pytest.mark.parametrize("name", ['"bot\\n"', '"Bot"', '"a b"', '"-a"', f'"{"a" * 40}"'])
def test_bot_names_are_matched_whole(tmp_path: Path, name: str) -> None:
    assert "bot name" in refused(tmp_path, f'[bots.{name}]\ncommand = ["true"]\n').what


def test_secret_and_alert_names_are_matched_whole(tmp_path: Path) -> None:
    assert "secret name" in refused(tmp_path, f'{BOT}secrets = ["KEY\\n"]\n').what
    text = '[[monitoring.alerts]]\nname = "cpu\\n"\nmetric = "bot.cpu_percent"\nthreshold = 1\n'
    assert "alert name" in refused(tmp_path, text).what
    assert (
        "threshold"
        in refused(tmp_path, '[[monitoring.alerts]]\nmetric = "bot.cpu_percent"\nthreshold = nan\n').what
    )


# ----------------------------------------------------------------------------- paths and ports


@pytest.mark.parametrize(
    "source", ["/proc/1/root", "/proc/self/root", "/sys/kernel", "/dev/shm", "/dev/null", "/proc"]
)
def test_kernel_folders_are_refused_as_mount_sources(tmp_path: Path, source: str) -> None:
    err = refused(tmp_path, f'{BOT}filesystem.ro = ["{source}"]\n')
    assert "the kernel's view" in err.what and "filesystem.ro" in (err.where or "")
    with pytest.raises(UsageError, match="kernel's view"):
        policy_from_flags(["true"], base_dir=str(tmp_path), ro=[source])


def test_a_symlink_into_proc_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").symlink_to("/proc/1/root")
    err = refused(tmp_path, f'{BOT}filesystem.ro = ["./root"]\n')
    assert "/proc" in err.what
    (tmp_path / "ok").mkdir()
    assert loads(tmp_path, f'{BOT}filesystem.ro = ["./ok"]\n').ro == (
        (str(tmp_path / "ok"), str(tmp_path / "ok")),
    )


def test_path_text_bounds(tmp_path: Path) -> None:
    assert "not a path" in refused(tmp_path, f'{BOT}workspace = "a\\u0000b"\n').what
    assert "bytes long" in refused(tmp_path, f'{BOT}workspace = "{"d/" * 3000}"\n').what


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("network.publish", '["127.0.0.1:0:80"]'),
        ("network.publish", '["127.0.0.1:70000:80"]'),
        ("network.publish", '["127.0.0.1:80:²"]'),
        ("health.tcp", '"127.0.0.1:99999"'),
    ],
)
def test_port_bounds(tmp_path: Path, key: str, value: str) -> None:
    refused(tmp_path, f"{BOT}{key} = {value}\n")


def test_gateway_subnet_and_upstreams(tmp_path: Path) -> None:
    for subnet in ("8.8.8.0/24", "10.0.0.0/30", "127.0.0.0/8", "0.0.0.0/8", "fd00::/64", "nope"):
        err = refused(tmp_path, f'[gateway]\nsubnet = "{subnet}"\n')
        assert "gateway.subnet" in (err.where or "")
    for upstream in ("dns.google", "1.1.1.1:0", "[::1", "1.1.1.1:²"):
        refused(tmp_path, f'[gateway]\ndns_upstream = ["{upstream}"]\n')
    loaded = load_spec(
        write(tmp_path, '[gateway]\nsubnet = "192.168.77.0/24"\ndns_upstream = ["9.9.9.9:53"]\n')
    )
    assert loaded.spec.gateway.subnet == "192.168.77.0/24"


# ----------------------------------------------------------------------------- listeners


def test_public_prometheus_needs_an_opt_in(tmp_path: Path) -> None:
    for address in ("0.0.0.0:9464", "[::]:9464", "192.0.2.10:9464"):
        err = refused(tmp_path, f'[monitoring]\nprometheus_listen = "{address}"\n')
        assert "not a loopback address" in err.what and "prometheus_expose" in (err.hint or "")
    text = '[monitoring]\nprometheus_listen = "0.0.0.0:9464"\nprometheus_expose = true\n'
    assert load_spec(write(tmp_path, text)).spec.monitoring.prometheus_expose
    for address in ("127.0.0.1:9464", "[::1]:0", "localhost:9464", "off"):
        load_spec(write(tmp_path, f'[monitoring]\nprometheus_listen = "{address}"\n'))
    refused(tmp_path, '[monitoring]\nprometheus_listen = "metrics.example:9464"\n')


def test_one_rule_for_every_listener(tmp_path: Path) -> None:
    """publish, prometheus_listen and the API refuse the same addresses with the same words."""
    from clawpen.api.config import make_config

    for host in ("0.0.0.0", "10.1.2.3", "::", "::ffff:10.0.0.1"):
        with pytest.raises(listen.PublicListener):
            listen.check_listener("x", host, opted_in=False, opt_in="opt in")
        listen.check_listener("x", host, opted_in=True, opt_in="opt in")
    for host in ("127.0.0.1", "127.9.9.9", "::1", "localhost", "::ffff:127.0.0.1"):
        listen.check_listener("x", host, opted_in=False, opt_in="opt in")
    publish = refused(tmp_path, f'{BOT}network.publish = ["0.0.0.0:8080:80"]\n')
    metrics = refused(tmp_path, '[monitoring]\nprometheus_listen = "0.0.0.0:9464"\n')
    with pytest.raises(UsageError) as api:
        make_config("0.0.0.0:8080")
    for err in (publish, metrics, api.value):
        assert "which is not a loopback address (a wildcard: every interface)" in err.what, err.what


# ----------------------------------------------------------------------------- the loader


def test_loader_refuses_huge_deep_and_non_utf8_files(tmp_path: Path) -> None:
    path = tmp_path / "clawpen.toml"
    path.write_text("# " + "x" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_spec(path)
    path.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match="levels deep"):
        load_spec(path)
    path.write_text("x = " + "[" * 40 + "]" * 40 + "\n")
    with pytest.raises(ConfigError, match="levels deep"):
        load_spec(path)
    path.write_bytes(b'[bots.a]\ncommand = ["ok"]\nenv = { A = "\xc3\x28" }\n')
    with pytest.raises(ConfigError, match="not valid UTF-8") as err:
        load_spec(path)
    assert err.value.where == f"{path}:3:14"
    with pytest.raises(ConfigError, match="cannot read"):
        load_spec(tmp_path)


# ----------------------------------------------------------------------------- units and flags


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e30, 0.5, "9" * 400, "1e400", [], None])
def test_unit_functions_raise_unit_errors_only(bad: object) -> None:
    for fn in (units.parse_size, units.parse_duration, units.parse_rate, units.parse_cpus):
        if fn in (units.parse_duration, units.parse_cpus) and bad == 0.5:
            continue
        with pytest.raises(units.UnitError):
            fn(bad)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "1e400", "soon", "400d"])
def test_run_timeout_flag_is_checked(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--timeout", value, "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --timeout:") and "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--memory", "1e30"),
        ("--memory", "nan"),
        ("--cpus", "nan"),
        ("--cpus", "1e400"),
        ("--disk", "0"),
        ("--tmp", "2P"),
        ("--pids", "0"),
        ("--nofile", "99999999999"),
    ],
)
def test_plan_flags_have_the_spec_bounds(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", flag, value, "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and flag in err and "Traceback" not in err
