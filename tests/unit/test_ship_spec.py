"""``[logs.ship]``: defaults, targets, and clear errors at their line (exit 2)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from clawpen.errors import ConfigError
from clawpen.spec.loader import load_spec
from clawpen.spec.logship import DEFAULT_BACKLOG

BOT = '[bots.web]\ncommand = ["python3", "bot.py"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clawpen.toml"
    path.write_text(BOT + textwrap.dedent(text))
    return path


def test_defaults_ship_nowhere(tmp_path: Path) -> None:
    ship = load_spec(write(tmp_path, "")).spec.logs.ship
    assert ship.targets == [] and ship.backlog == DEFAULT_BACKLOG and ship.batch == 500


def test_targets_load_with_paths_from_the_spec_folder(tmp_path: Path) -> None:
    text = """
    [logs.ship]
    backlog = "64M"
    batch = 100
    [[logs.ship.targets]]
    name = "central"
    type = "syslog"
    url = "tls://logs.example.net:6514"
    ca = "ca.pem"
    cert = "client.pem"
    key = "client.key"
    server_name = "logs.example.net"
    bots = ["web"]
    [[logs.ship.targets]]
    name = "journal"
    type = "journal-remote"
    url = "http://127.0.0.1:19532"
    """
    ship = load_spec(write(tmp_path, text)).spec.logs.ship
    assert ship.backlog == 64 << 20 and ship.batch == 100
    central, journal = ship.targets
    assert central.ca == str(tmp_path / "ca.pem") and central.secure and central.port == 6514
    assert central.host == "logs.example.net" and central.wants("web") and not central.wants("db")
    assert not journal.secure and journal.wants("db")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ('type = "syslog"\nurl = "http://h:1"', "a syslog target takes tcp or tls"),
        ('type = "journal-remote"\nurl = "tls://h:1"', "takes http or https"),
        ('type = "syslog"\nurl = "tcp://h"', "needs a host and a port"),
        ('type = "syslog"\nurl = "tcp://user:pw@h:1"', "holds credentials"),
        ('type = "syslog"\nurl = "tcp://h:1/x"', "has a path"),
        ('type = "syslog"\nurl = "tcp://h:1"\nca = "ca.pem"', "need tls://"),
        ('type = "syslog"\nurl = "tls://h:1"\ncert = "c.pem"', "cert and key go together"),
        ('type = "kafka"\nurl = "tcp://h:1"', "type"),
        ('type = "syslog"\nurl = "tcp://h:1"\nbots = ["Bad Name"]', "Bad Name"),
    ],
)
def test_bad_targets_are_refused_at_their_line(tmp_path: Path, target: str, message: str) -> None:
    path = write(tmp_path, f'[logs.ship]\n[[logs.ship.targets]]\nname = "c"\n{target}\n')
    with pytest.raises(ConfigError, match=message) as err:
        load_spec(path)
    assert err.value.where is not None and err.value.where.startswith(f"{path}:")
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[logs.ship]\nbacklog = "lots"', "backlog"),
        ("[logs.ship]\nbatch = 0", "batch"),
        ('[logs.ship]\nretry = "1s"', "retry"),
        (
            '[[logs.ship.targets]]\nname = "a"\ntype = "syslog"\nurl = "tcp://h:1"\n'
            '[[logs.ship.targets]]\nname = "a"\ntype = "syslog"\nurl = "tcp://h:2"',
            "two log targets are named 'a'",
        ),
        ('[[logs.ship.targets]]\nname = "A b"\ntype = "syslog"\nurl = "tcp://h:1"', "target name"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_spec(write(tmp_path, text + "\n"))
    assert err.value.exit_code == 2
