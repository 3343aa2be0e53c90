"""The checks `clawpen up` makes before it changes anything (clawpen.daemon.precheck)."""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawpen.daemon import precheck
from clawpen.daemon.precheck import HostLimits, Problem, check_bot, check_bots, port_in_use, refuse
from clawpen.errors import ConfigError
from clawpen.plan.build import HostFacts
from clawpen.plan.model import SeccompPolicy
from clawpen.spec.loader import LoadedSpec, parse_spec_text
from clawpen.spec.models import Bot

HOST = HostLimits(HostFacts(cpu_count=4, system_dirs=(("/usr", None),), etc_entries=()), memory=8 << 30)
SECCOMP = SeccompPolicy(errno_syscalls=("mount",))


@pytest.fixture
def held_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def load(tmp_path: Path, text: str) -> LoadedSpec:
    file = tmp_path / "spec" / "clawpen.toml"
    file.parent.mkdir(exist_ok=True)
    file.write_text(textwrap.dedent(text))
    return parse_spec_text(file.read_text(), file)


def check(
    tmp_path: Path, loaded: LoadedSpec, name: str, bot: Bot | None = None, **kw: object
) -> list[Problem]:
    args: dict[str, object] = {
        "host": HOST,
        "seccomp": SECCOMP,
        "vault_names": (),
        "state_dir": tmp_path / "state",
        "spec_file": loaded.path,
    }
    args.update(kw)
    return check_bot(name, bot or loaded.spec.bots[name], str(loaded.base_dir), **args)  # type: ignore[arg-type]


def fields(problems: list[Problem]) -> list[str]:
    return [p.field for p in problems]


def test_a_bot_that_can_start_has_no_problem(tmp_path: Path) -> None:
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "data").mkdir()
    loaded = load(
        tmp_path,
        """
        [bots.ok]
        command = ["sleep", "1"]
        secrets = ["API_TOKEN"]
        filesystem = { ro = ["./data:/data"] }
        resources = { cpus = 4, memory = "8G" }
        health = { http = "http://127.0.0.1:8000/healthz" }
        """,
    )
    assert check(tmp_path, loaded, "ok", vault_names=["API_TOKEN", "OTHER"]) == []


def test_a_missing_secret_is_named_with_its_fix(tmp_path: Path) -> None:
    loaded = load(tmp_path, '[bots.a]\ncommand = ["true"]\nsecrets = ["API_TOKEN", "DB_PASS"]\n')
    found = check(tmp_path, loaded, "a", vault_names=["DB_PASS"])
    assert found == [
        Problem("a", "bots.a.secrets", "secret not in the vault: API_TOKEN", "clawpen secrets set API_TOKEN")
    ]


def test_a_missing_mount_source_is_refused_an_existing_one_is_not(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        [bots.a]
        command = ["true"]
        filesystem = { ro = ["./gone:/data"], rw = ["./made"] }
        """,
    )
    found = check(tmp_path, loaded, "a")
    spec = tmp_path / "spec"
    assert fields(found) == ["bots.a.filesystem.ro", "bots.a.filesystem.rw"]
    assert f"mount source {spec / 'gone'} does not exist" in found[0].what
    assert not (spec / "gone").exists() and not (spec / "made").exists()  # nothing was created
    (spec / "gone").mkdir()
    (spec / "made").mkdir()
    assert check(tmp_path, loaded, "a") == []


def test_cpus_and_memory_beyond_the_host(tmp_path: Path) -> None:
    loaded = load(tmp_path, '[bots.a]\ncommand = ["true"]\nresources = { cpus = 1000, memory = "9G" }\n')
    found = check(tmp_path, loaded, "a")
    assert fields(found) == ["bots.a.resources.cpus", "bots.a.resources.memory"]
    assert (
        "more CPUs than this host has (4)" in found[0].what and found[0].fix == "use a value from 0.01 to 4"
    )
    assert "more than this host has (8.0 GiB)" in found[1].what and found[1].fix == "use at most 8G"
    big = HostLimits(HostFacts(1000, HOST.facts.system_dirs, ()), memory=16 << 30)
    assert check(tmp_path, loaded, "a", host=big) == []


def test_a_backoff_initial_above_backoff_max_is_caught_as_the_instance_would(tmp_path: Path) -> None:
    loaded = load(tmp_path, '[bots.a]\ncommand = ["true"]\n')
    bot = loaded.spec.bots["a"]
    # built around the model's own check (the spec refuses it too): the supervisor's policy decides
    bad = bot.model_copy(
        update={"restart": bot.restart.model_copy(update={"backoff_initial": 10.0, "backoff_max": 5.0})}
    )
    found = check(tmp_path, loaded, "a", bad)
    assert fields(found) == ["bots.a.restart.backoff_initial"]
    assert "backoff_initial (10 s) is longer than backoff_max (5 s)" in found[0].what
    zero = bot.model_copy(update={"restart": bot.restart.model_copy(update={"window": 0.0})})
    found = check(tmp_path, loaded, "a", zero)  # anything else RestartPolicy refuses
    assert len(found) == 1 and found[0].field == "bots.a.restart" and "window" in found[0].what


def test_a_bad_health_address_is_caught_before_the_watcher_meets_it(tmp_path: Path) -> None:
    loaded = load(tmp_path, '[bots.a]\ncommand = ["true"]\nhealth = { tcp = "127.0.0.1:9" }\n')
    bot = loaded.spec.bots["a"]
    assert bot.health is not None
    bad = bot.model_copy(update={"health": bot.health.model_copy(update={"tcp": "no-port"})})
    assert fields(check(tmp_path, loaded, "a", bad)) == ["bots.a.health.tcp"]


def test_a_port_someone_listens_on_is_refused_unless_clawpen_releases_it(
    tmp_path: Path, held_port: int
) -> None:
    loaded = load(
        tmp_path, f'[bots.web]\ncommand = ["true"]\nnetwork = {{ publish = ["127.0.0.1:{held_port}:80"] }}\n'
    )
    found = check(tmp_path, loaded, "web")
    assert fields(found) == ["bots.web.network.publish"]
    assert f"127.0.0.1:{held_port} is already in use" in found[0].what
    assert check(tmp_path, loaded, "web", released={("127.0.0.1", held_port)}) == []


def test_port_in_use_answers_as_the_relay_would(held_port: int) -> None:
    assert (
        port_in_use("127.0.0.1", held_port) == f"127.0.0.1:{held_port} is already in use by another program"
    )
    with socket.socket() as s:  # a free port: free, and the check leaves nothing bound
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert port_in_use("127.0.0.1", free) is None
    assert port_in_use("127.0.0.1", free) is None
    assert port_in_use("192.0.2.1", free) == "192.0.2.1 is not an address of this host"


def test_a_workspace_at_the_spec_folder_is_refused(tmp_path: Path) -> None:
    loaded = load(tmp_path, '[bots.a]\ncommand = ["true"]\n')
    bot = loaded.spec.bots["a"].model_copy(update={"workspace": str(tmp_path / "spec")})
    found = check(tmp_path, loaded, "a", bot)
    assert len(found) == 1 and found[0].field.startswith("bots.a") and "spec" in found[0].what, found


def test_every_problem_of_every_bot_is_reported_together(tmp_path: Path, held_port: int) -> None:
    loaded = load(
        tmp_path,
        f"""
        [bots.fine]
        command = ["true"]
        [bots.sec]
        command = ["true"]
        secrets = ["NOPE"]
        [bots.many]
        command = ["true"]
        resources = {{ cpus = 64 }}
        network = {{ publish = ["127.0.0.1:{held_port}:80"] }}
        """,
    )
    found = check_bots(
        sorted(loaded.spec.bots.items()),
        str(loaded.base_dir),
        host=HOST,
        seccomp=SECCOMP,
        vault_names=(),
        state_dir=tmp_path / "state",
    )
    assert [(p.bot, p.field) for p in found] == [
        ("many", "bots.many.resources.cpus"),
        ("many", "bots.many.network.publish"),
        ("sec", "bots.sec.secrets"),
    ]
    with pytest.raises(ConfigError) as err:
        refuse(found, loaded.path)
    assert err.value.exit_code == 2 and err.value.where == str(loaded.path)
    lines = err.value.what.splitlines()
    assert lines[0] == "nothing was applied: 2 bots cannot start (many, sec)"
    assert lines[1].startswith("  many: bots.many.resources.cpus: cpus = 64") and len(lines) == 4
    refuse([], loaded.path)  # nothing to refuse: no error


def test_vault_names_need_no_key(tmp_path: Path) -> None:
    assert precheck.vault_names(tmp_path) == []  # no vault yet
    from clawpen.vault.store import Vault

    Vault(tmp_path, environ={}).set("API_TOKEN", b"x")
    (tmp_path / "master.key").unlink()  # the key is gone: the names are still readable
    assert precheck.vault_names(tmp_path) == ["API_TOKEN"]
