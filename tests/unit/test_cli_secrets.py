"""``clawpen secrets`` and ``clawpen audit-log``: values never shown, every change audited."""

import argparse
import io
import json

import pytest

from clawpen import cli_secrets
from clawpen.errors import ClawpenError

VALUE = "very-secret-value-42"


class _Stdin(io.TextIOWrapper):
    def isatty(self):
        return False


def run(argv, state, monkeypatch, stdin=b""):
    """Parse and dispatch like clawpen.cli.main does, with a private state directory."""
    monkeypatch.setenv("CLAWPEN_HOME", str(state))
    monkeypatch.delenv("CLAWPEN_MASTER_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr("sys.stdin", _Stdin(io.BytesIO(stdin)))
    parser = argparse.ArgumentParser(prog="clawpen")
    cli_secrets.add_commands(parser.add_subparsers(dest="cmd"))
    ns = parser.parse_args(argv)
    return cli_secrets.COMMANDS[ns.cmd](ns)


def test_set_from_stdin_then_ls_shows_name_only(tmp_path, monkeypatch, capsys):
    assert run(["secrets", "set", "API_TOKEN"], tmp_path, monkeypatch, stdin=VALUE.encode() + b"\n") == 0
    assert run(["secrets", "ls"], tmp_path, monkeypatch) == 0
    assert run(["secrets", "ls", "--json"], tmp_path, monkeypatch) == 0
    out, err = capsys.readouterr()
    assert "API_TOKEN" in out
    assert VALUE not in out + err
    from clawpen.vault.store import Vault

    assert Vault(tmp_path, environ={}).get("API_TOKEN") == VALUE.encode()  # one newline stripped


def test_from_file_keeps_bytes(tmp_path, monkeypatch, capsys):
    f = tmp_path / "v"
    f.write_bytes(b"line\n")
    run(["secrets", "set", "FILE_KEY", "--from-file", str(f)], tmp_path, monkeypatch)
    from clawpen.vault.store import Vault

    assert Vault(tmp_path, environ={}).get("FILE_KEY") == b"line\n"


def test_rm_rotate_and_audit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUDO_USER", "alice")
    run(["secrets", "set", "API_TOKEN"], tmp_path, monkeypatch, stdin=VALUE.encode())
    run(["secrets", "set", "OTHER"], tmp_path, monkeypatch, stdin=b"other-value")
    run(["secrets", "rotate-key"], tmp_path, monkeypatch)
    run(["secrets", "rm", "OTHER"], tmp_path, monkeypatch)
    capsys.readouterr()
    assert run(["audit-log", "--json"], tmp_path, monkeypatch) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["action"] for r in records] == [
        "secrets.set",
        "secrets.set",
        "secrets.rotate-key",
        "secrets.rm",
    ]
    assert records[0]["detail"] == {"name": "API_TOKEN"}
    assert {r["who"] for r in records} == {"alice"}
    assert VALUE not in (tmp_path / "audit.log").read_text()


def test_empty_value_and_bad_name_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ClawpenError, match="empty value"):
        run(["secrets", "set", "API_TOKEN"], tmp_path, monkeypatch, stdin=b"\n")
    with pytest.raises(ClawpenError, match="not a valid secret name"):
        run(["secrets", "set", "bad-name"], tmp_path, monkeypatch, stdin=b"value")


def test_audit_log_verify_exit_codes(tmp_path, monkeypatch, capsys):
    for name in ("A_KEY", "B_KEY", "C_KEY"):
        run(["secrets", "set", name], tmp_path, monkeypatch, stdin=VALUE.encode())
    capsys.readouterr()
    assert run(["audit-log", "--verify"], tmp_path, monkeypatch) == 0
    assert "audit log intact: 3 records" in capsys.readouterr().out
    log = tmp_path / "audit.log"
    log.write_text(log.read_text().replace("B_KEY", "Z_KEY"))
    assert run(["audit-log", "--verify"], tmp_path, monkeypatch) == 1
    err = capsys.readouterr().err
    assert "error: the audit log has been tampered with" in err
    assert "line 2 (seq 2)" in err
    assert run(["audit-log", "--verify", "--json"], tmp_path, monkeypatch) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
