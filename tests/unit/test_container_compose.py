"""``clawpen export compose``: the pure spec -> Compose dict, its YAML, and the spec adapter."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from clawpen import cli
from clawpen.container.compose import ComposeBot, compose_bot, compose_dict, compose_text, from_spec, to_yaml
from clawpen.errors import ConfigError
from clawpen.spec.loader import load_spec

SPEC = """
[bots.alpha]
command = ["python3", "-c", "print('hi')"]
workspace = "./ws"
replicas = 3
secrets = ["API_TOKEN", "DB_PASS"]
secret_env = ["DB_PASS"]
env = { MODE = "x y", "no" = "yes" }
resources = { cpus = 0.5, memory = "512M", pids = 64, nofile = 256, tmp = "16M" }
filesystem = { ro = ["./data:/data"] }
health = { cmd = ["python3", "-c", "pass"], interval = "10s", start_period = "1m" }
network = { egress = ["api.example.com:443"] }

[bots.beta]
command = ["sleep", "1"]
network = { publish = ["127.0.0.1:18080:8080"] }
health = { http = "http://127.0.0.1:8080/healthz" }

[bots.gamma]
command = ["sh", "-c", "echo $HOME ${X:-y}"]
restart = { policy = "no" }
resources = { disk = "unlimited" }
"""


def _spec(tmp_path: Path) -> tuple[object, Path]:
    (tmp_path / "ws").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "clawpen.toml").write_text(SPEC)
    loaded = load_spec(tmp_path / "clawpen.toml")
    return loaded.spec, loaded.base_dir


def _as_container(spec: object, images: dict[str, object]) -> SimpleNamespace:
    """The loaded bots switched to the container tier with an image (the spec fields ctier adds;
    until they land, the same attributes on the real, validated bot models)."""
    bots = spec.bots  # type: ignore[attr-defined]
    return SimpleNamespace(
        bots={
            n: b.model_copy(update={"tier": "container", "image": images[n]}) if n in images else b
            for n, b in bots.items()
        }
    )


@pytest.fixture
def bots(tmp_path: Path) -> list[ComposeBot]:
    """The spec's (validated) bots as the export sees them, each with its image and uid/gid."""
    spec, base = _spec(tmp_path)
    uids = {"alpha": 1_900_000_001, "beta": 1_900_000_002, "gamma": 1_900_000_003}
    return [
        compose_bot(n, b, base, image=f"clawpen-{n}:1", uid=uids[n], gid=uids[n] + 5)
        for n, b in spec.bots.items()  # type: ignore[attr-defined]
    ]


def test_limits_hardening_and_identity_carry_over(bots: list[ComposeBot], tmp_path: Path) -> None:
    svc = compose_dict(bots)["services"]["alpha"]
    assert svc["image"] == "clawpen-alpha:1"
    assert svc["command"] == ["python3", "-c", "print('hi')"]
    assert svc["user"] == "1900000001:1900000006"
    assert (svc["cpus"], svc["mem_limit"], svc["memswap_limit"], svc["pids_limit"]) == (
        0.5,
        512 << 20,
        512 << 20,
        64,
    )
    assert svc["ulimits"] == {"nofile": {"soft": 256, "hard": 256}}
    assert svc["deploy"] == {"replicas": 3}
    assert svc["restart"] == "on-failure"
    assert svc["read_only"] is True and svc["tmpfs"] == [f"/tmp:size={16 << 20},mode=1777"]
    assert svc["cap_drop"] == ["ALL"] and svc["security_opt"] == ["no-new-privileges:true"]
    assert svc["init"] is True and "privileged" not in svc
    assert svc["environment"] == {"MODE": "x y", "no": "yes"}
    assert svc["volumes"] == [
        {"type": "bind", "source": str(tmp_path / "ws"), "target": "/workspace"},
        {"type": "bind", "source": str(tmp_path / "data"), "target": "/data", "read_only": True},
    ]
    assert svc["healthcheck"] == {
        "test": ["CMD", "python3", "-c", "pass"],
        "interval": "10s",
        "timeout": "5s",
        "retries": 3,
        "start_period": "60s",
    }


def test_network_none_only_without_egress_and_ports(bots: list[ComposeBot]) -> None:
    services = compose_dict(bots)["services"]
    assert "network_mode" not in services["alpha"]  # egress: a network, noted as unfiltered
    assert "network_mode" not in services["beta"] and services["beta"]["ports"] == ["127.0.0.1:18080:8080"]
    assert services["gamma"]["network_mode"] == "none"
    assert services["gamma"]["restart"] == "no"
    assert services["gamma"]["command"] == ["sh", "-c", "echo $$HOME $${X:-y}"]  # no substitution
    assert "healthcheck" not in services["beta"]  # http checks are not exported...
    text = compose_text(bots)
    assert "# beta:\n#   - no egress in clawpen" in text  # ...and the file says so
    assert "http health check is not exported" in text
    assert "api.example.com:443; here it is NOT limited" in text
    assert "disk cap" not in text.split("# gamma:")[1].split("services:")[0]  # unlimited: nothing lost


def test_secrets_are_files_never_values(bots: list[ComposeBot], tmp_path: Path) -> None:
    data = compose_dict(bots, secrets_dir="./s")
    assert data["services"]["alpha"]["secrets"] == ["API_TOKEN", "DB_PASS"]
    assert data["secrets"] == {"API_TOKEN": {"file": "./s/API_TOKEN"}, "DB_PASS": {"file": "./s/DB_PASS"}}
    assert "DB_PASS" not in data["services"]["alpha"]["environment"]
    assert "secret_env DB_PASS: not set as environment variables" in compose_text(bots)
    assert "secrets" not in compose_dict(bots[1:])  # no bot with secrets: no top-level table


def test_yaml_reads_back_as_the_dict(bots: list[ComposeBot]) -> None:
    text = compose_text(bots)
    assert yaml.safe_load(text) == compose_dict(bots)
    tricky = {"on": "off", "a: b": ["- x", "#c", "", {}], "n": None, "t": True, "f": 1.5, "e": []}
    assert yaml.safe_load("\n".join(to_yaml(tricky))) == tricky


def test_only_container_bots_and_an_image_is_required(tmp_path: Path) -> None:
    spec, base = _spec(tmp_path)
    chosen = from_spec(_as_container(spec, {"gamma": "img:1"}), base, lambda n: (7, 8))
    assert [(b.policy.name, b.image, b.uid, b.gid) for b in chosen] == [("gamma", "img:1", 7, 8)]
    assert from_spec(spec, base, lambda n: (1, 1)) == []  # sandbox bots are not exported
    gamma = spec.bots["gamma"]  # type: ignore[attr-defined]
    no_image = SimpleNamespace(bots={"gamma": gamma.model_copy(update={"tier": "container"})})
    with pytest.raises(ConfigError) as err:
        from_spec(no_image, base, lambda n: (1, 1))
    assert err.value.where == "bots.gamma.image"
    table = SimpleNamespace(context="./ctx", dockerfile="Df")  # image = { context, dockerfile }
    built = from_spec(_as_container(spec, {"gamma": table}), base, lambda n: (1, 1))
    assert built[0].image.startswith("clawpen-gamma:")


def test_cli_refuses_a_spec_without_container_bots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _spec(tmp_path)
    out = tmp_path / "compose.yml"
    assert cli.main(["export", "compose", "-f", str(tmp_path / "clawpen.toml"), "-o", str(out)]) == 2
    assert "has no container bots to export" in capsys.readouterr().err
    assert not out.exists()


def test_build_steps_and_start_cpus_are_noted_not_dropped(tmp_path: Path) -> None:
    (tmp_path / "clawpen.toml").write_text(
        '[bots.built]\ntier = "container"\nimage = "img:1"\ncommand = ["sh", "/opt/bot/run.sh"]\n'
        "resources = { cpus = 0.5, start_cpus = 2 }\n"
        'build = { steps = [["sh", "-c", "echo x > /opt/bot/run.sh"]] }\n'
        '[bots.plain]\ntier = "container"\nimage = "img:1"\ncommand = ["true"]\n'
    )
    loaded = load_spec(tmp_path / "clawpen.toml")
    bots = from_spec(loaded.spec, loaded.base_dir, lambda n: (7, 8))
    text = compose_text(bots)
    built = text.split("# built:")[1].split("# plain:")[0]
    assert "build steps are not run: run them yourself and bind their output read-only at /opt/bot" in built
    assert "start_cpus 2 (the start-up CPU allowance) is not granted: cpus holds" in built
    plain = text.split("# plain:")[1].split("services:")[0]
    assert "build steps" not in plain and "start_cpus" not in plain  # the control: nothing to note
    assert compose_dict(bots)["services"]["built"]["cpus"] == 0.5
