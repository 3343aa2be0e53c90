"""`clawpen secrets get` shows a value on a terminal only, audits the name alone, keeps
clawpen's own names; `init --template openclaw` says how to read the token and add a key."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clawpen.cli import main

VALUE = "tok-4b1d9e0c77a2f3"


def clawpen(
    home: Path, *args: str, stdin: str | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    env["CLAWPEN_HOME"] = str(home)
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", "clawpen", *args],
        input=stdin,
        capture_output="stdout" not in kw,
        text=True,
        env=env,
        check=False,
        timeout=60,
        **kw,
    )


def on_a_terminal(home: Path, *args: str) -> str:
    """Run ``clawpen ARGS`` with its stdout on a pseudo-terminal; what it wrote there."""
    primary, secondary = os.openpty()
    try:
        proc = clawpen(home, *args, stdout=secondary, stderr=subprocess.PIPE)
        os.close(secondary)
        secondary = -1
        assert proc.returncode == 0, proc.stderr
        out = b""
        with contextlib.suppress(OSError):  # EIO once the terminal is drained
            while chunk := os.read(primary, 4096):
                out += chunk
        return out.decode()
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)


def test_get_prints_on_a_terminal_refuses_a_pipe_and_audits_the_name(tmp_path: Path) -> None:
    home = tmp_path / "state"
    assert clawpen(home, "secrets", "set", "API_TOKEN", stdin=VALUE + "\n").returncode == 0
    piped = clawpen(home, "secrets", "get", "API_TOKEN")
    assert piped.returncode == 2 and VALUE not in piped.stdout
    assert "refusing to print a secret to a pipe; use --force" in piped.stderr
    forced = clawpen(home, "secrets", "get", "API_TOKEN", "--force")
    assert forced.returncode == 0 and forced.stdout == VALUE  # byte for byte, no newline added
    assert VALUE in on_a_terminal(home, "secrets", "get", "API_TOKEN")
    missing = clawpen(home, "secrets", "get", "NOPE", "--force")
    assert missing.returncode == 2 and "NOPE" in missing.stderr and not missing.stdout
    log = (home / "audit.log").read_text() if (home / "audit.log").exists() else ""
    records = clawpen(home, "audit-log", "--json").stdout
    gets = [line for line in records.splitlines() if '"secrets.get"' in line]
    assert len(gets) == 2 and all('"API_TOKEN"' in line for line in gets)  # the refused pipe is not one
    assert VALUE not in records and VALUE not in log


@pytest.mark.parametrize("name", ["CLAWPEN_SNAPSHOT_PASSWORD", "CLAWPEN_X"])
def test_get_refuses_clawpens_own_names(tmp_path: Path, name: str) -> None:
    got = clawpen(tmp_path / "state", "secrets", "get", name, "--force")
    assert got.returncode == 2 and "clawpen's own" in got.stderr and not got.stdout


def test_init_openclaw_says_how_to_read_the_token_and_add_a_provider_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--template", "openclaw", str(tmp_path / "oc")]) == 0
    out = capsys.readouterr().out
    spec = tmp_path / "oc" / "clawpen.toml"
    assert "clawpen secrets get OPENCLAW_GATEWAY_TOKEN" in out
    assert f"clawpen secrets add-to openclaw ANTHROPIC_API_KEY --env -f {spec.resolve()}" in out
    assert "api.anthropic.com:443" in out and "egress" in out
    # the command it prints works on the file it wrote
    added = clawpen(
        tmp_path / "state",
        "secrets", "add-to", "openclaw", "ANTHROPIC_API_KEY", "--env", "-f", str(spec),
        stdin="sk-ant-1\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "run `clawpen up` to apply" in added.stderr
    assert '"OPENCLAW_GATEWAY_TOKEN", "ANTHROPIC_API_KEY"' in spec.read_text()
