"""`clawpen net log`: flags checked before the daemon is asked, rows rendered on one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawpen import cli
from clawpen.cli_net import render


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["net", "log", "bot", "--since", "yesterday-ish"], "--since 'yesterday-ish' is not a duration"),
        (["net", "log", "bot", "-n", "0"], "--tail must be at least 1"),
    ],
)
def test_bad_flags_exit_2_before_any_daemon(
    args: list[str],
    text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLAWPEN_HOME", str(tmp_path / "state"))
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
    assert not (tmp_path / "state" / "clawpen.sock").exists()  # no daemon was started


def test_render() -> None:
    row = {
        "id": 3, "at": 0.0, "bot": "fetch", "replica": 1, "kind": "connect", "host": "api.example.com",
        "port": 443, "verdict": "allowed", "reason": "*.example.com:443", "up": 2048, "down": 5 << 20,
        "duration": 1.25,
    }  # fmt: skip
    line = render(row)
    assert "fetch[1]" in line and "ALLOW" in line and "api.example.com:443" in line
    assert "up 2.0K down 5.0M 1.25s" in line and line.endswith("*.example.com:443")
    denied = render({**row, "replica": 0, "verdict": "denied", "reason": "no", "up": 0, "down": 0})
    assert "fetch " in denied and "DENY" in denied and "up 0B down 0B" in denied
