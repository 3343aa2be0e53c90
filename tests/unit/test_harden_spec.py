"""``[host.harden]``: defaults, and bad values refused at their field (exit 2, nothing read or
changed); the CLI's refusals (a missing root, apply to this host's own root without --yes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harden_roots import KEY

from clawpen.cli import main
from clawpen.errors import ConfigError
from clawpen.spec.host import Harden
from clawpen.spec.loader import parse_spec_text


def harden(text: str) -> Harden:
    loaded = parse_spec_text("[host.harden]\n" + text, Path("/x/clawpen.toml"))
    assert loaded.spec.host.harden is not None
    return loaded.spec.host.harden


def test_defaults_follow_the_practice() -> None:
    assert parse_spec_text("", Path("/x/clawpen.toml")).spec.host.harden is None
    cfg = harden("")
    assert (cfg.operator, cfg.operator_keys, cfg.ssh_password_login, cfg.ssh_root_login) == (
        "clawpen-op",
        [],
        False,
        False,
    )
    assert (cfg.auto_updates, cfg.firewall, cfg.snapshots, cfg.clawpen_path) == ("off", True, True, None)
    # a key is kept as its type, base64 and comment, one space apart
    assert harden(f'operator_keys = ["  {KEY.replace(" ", "   ")}  "]').operator_keys == [KEY]


BLOB = KEY.split()[1]
RSA_BLOB = "AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7"  # names ssh-rsa (truncated after the name: fine for the check)


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ('operator = "Root"', "host.harden.operator", "not a valid user name"),
        ('operator = "root"', "host.harden.operator", "system account"),
        ('operator = "op;rm"', "host.harden.operator", "not a valid user name"),
        ('operator_keys = ["ssh-dss AAAA"]', "host.harden.operator_keys", "unknown key type"),
        ('operator_keys = ["ssh-ed25519 not*base64"]', "host.harden.operator_keys", "not valid base64"),
        (f'operator_keys = ["ssh-ed25519 {RSA_BLOB}"]', "host.harden.operator_keys", "'ssh-rsa' key"),
        ('operator_keys = ["ssh-ed25519"]', "host.harden.operator_keys", "not an SSH public key line"),
        (f'operator_keys = ["ssh-ed25519 {BLOB[:8]}"]', "host.harden.operator_keys", "truncated"),
        (
            f'operator_keys = ["command=\\"x\\" ssh-ed25519 {BLOB}"]',
            "host.harden.operator_keys",
            "unknown key type",
        ),
        ('auto_updates = "sometimes"', "host.harden.auto_updates", "'off', 'security' or 'all'"),
        ('clawpen_path = "clawpen"', "host.harden.clawpen_path", "absolute path"),
        ('clawpen_path = "/usr/bin/clawpen restart *"', "host.harden.clawpen_path", "absolute path"),
        ('ssh_password_login = "maybe"', "host.harden.ssh_password_login", ""),
        ("sudo_all = true", "host.harden.sudo_all", ""),
    ],
)
def test_bad_values_are_refused_at_their_field(text: str, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        harden(text)
    assert err.value.exit_code == 2
    assert err.value.where is not None and err.value.where.endswith(field), err.value.where
    assert says in err.value.what
    assert err.value.hint


def test_cli_refuses_a_bad_spec_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "clawpen.toml"
    spec.write_text('[host.harden]\noperator = "root"\n')
    root = tmp_path / "root"
    root.mkdir()
    assert main(["host", "harden", "plan", "--root", str(root), "-f", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "system account" in err and "host.harden.operator" in err
    assert list(root.iterdir()) == []
    assert main(["host", "harden", "plan", "--root", str(tmp_path / "none"), "-f", str(spec)]) == 2
    assert "--root" in capsys.readouterr().err


@pytest.mark.root  # reads this host's /etc/shadow (read only)
def test_apply_to_this_host_needs_yes(
    tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "clawpen.toml"
    spec.write_text('[host.harden]\noperator = "clawpen-test-nobody"\nfirewall = false\n')
    assert main(["host", "harden", "apply", "-f", str(spec)]) == 2
    out = capsys.readouterr()
    assert "host harden plan for /:" in out.out and "operator-user" in out.out
    assert "needs --yes" in out.err
    assert not (state / "harden").exists()  # nothing backed up: nothing was about to change


def test_sudo_never_allows_a_command_others_can_change(tmp_path: Path) -> None:
    from clawpen.harden.facts import unsafe_command

    folder = tmp_path / "bin"
    folder.mkdir(mode=0o755)
    command = folder / "clawpen"
    assert unsafe_command(command) is not None and "does not exist" in str(unsafe_command(command))
    command.write_text("#!/bin/sh\n")
    os.chmod(folder, 0o777)
    problem = unsafe_command(command)
    assert problem is not None and problem.startswith(f"{folder} is not root's or is writable by others")
    os.chmod(folder, 0o755)
    os.chmod(command, 0o757)
    problem = unsafe_command(command)
    assert problem is not None and problem.startswith(f"{command} is not root's")
    assert unsafe_command(Path("/usr/bin/env")) is None  # root's, in root's folders: allowed
