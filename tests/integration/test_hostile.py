"""`clawpen validate --hostile`: the built-in hostile actions run for real against a policy.

Positive: a sane policy contains every action (each with a working control on this host), the
host keeps no trace (no files in /usr, /etc, /; no fixture left behind), exit 0. Negative: a
policy with `disk = "unlimited"` lets the file-size action through; the validator says "escaped" and
exits 1, so it can fail; without `disk` in the spec the default cap contains it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_hostile

from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap]


@pytest.fixture
def spec_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="clawpen-h-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def _hostile(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_hostile(home, cwd, UID_BASE, *args)


def _traces() -> set[str]:
    found = set()
    for folder in ("/usr", "/etc", "/", "/root", "/tmp"):
        found |= {f"{folder}/{n}" for n in os.listdir(folder) if "clawpen-hostile" in n}
    return found


def test_a_sane_policy_contains_every_action(tmp_path: Path, spec_dir: Path) -> None:
    (spec_dir / "clawpen.toml").write_text(
        "[bots.target]\n"
        'command = ["sleep", "1"]\n'
        'workspace = "./ws"\n'
        'secrets = ["API_KEY"]\n'
        'resources = { memory = "96M", pids = 48, nofile = 256, disk = "32M", tmp = "16M" }\n'
    )
    before = _traces()
    proc = _hostile(tmp_path / "state", spec_dir, "--json")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    actions = report["bots"]["target"]["actions"]
    assert len(actions) >= 30
    assert {a["verdict"] for a in actions} == {"contained"}, [
        a for a in actions if a["verdict"] != "contained"
    ]
    groups = {a["group"] for a in actions}
    assert groups == {"filesystem", "processes", "privilege", "resources", "network", "secrets"}
    by_id = {a["id"]: a for a in actions}
    # a few inside/outside pairs, as evidence that both sides really ran
    assert "EROFS" in by_id["fs.write-usr"]["inside"] and "created" in by_id["fs.write-usr"]["control"]
    assert "EPERM" in by_id["priv.userns"]["inside"] and "unshare(user) ok" in by_id["priv.userns"]["control"]
    assert "oom" in by_id["res.memory"]["inside"] or "MemoryError" in by_id["res.memory"]["inside"]
    assert "forked" in by_id["proc.fork-bomb"]["control"] and "EAGAIN" in by_id["proc.fork-bomb"]["inside"]
    assert "read the secret" in by_id["sec.other-bot-file"]["control"]
    # the host keeps nothing: no probe file, no marker, no fixture folder
    assert _traces() <= before
    # the bot's own workspace was not used (a throwaway one was)
    assert not (spec_dir / "ws").exists()


def test_the_default_disk_cap_contains_the_file_size_action(tmp_path: Path, spec_dir: Path) -> None:
    """No `disk` in the spec: the default cap (10G) still stops a file from growing past it."""
    (spec_dir / "clawpen.toml").write_text(
        '[bots.plain]\ncommand = ["true"]\nresources = { memory = "64M", pids = 32, tmp = "16M" }\n'
    )
    proc = _hostile(tmp_path / "state", spec_dir, "plain", "--only", "resources")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[2]: line for line in proc.stdout.splitlines() if line.startswith("plain ")}
    assert "ESCAPED" not in lines["res.file-size"] and "ok" in lines["res.file-size"].split()[1], proc.stdout


def test_a_missing_disk_cap_is_reported_as_an_escape(tmp_path: Path, spec_dir: Path) -> None:
    (spec_dir / "clawpen.toml").write_text(
        '[bots.loose]\ncommand = ["true"]\nresources = { memory = "64M", pids = 32, disk = "unlimited" }\n'
    )
    proc = _hostile(tmp_path / "state", spec_dir, "loose", "--only", "resources")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = {line.split()[2]: line for line in proc.stdout.splitlines() if line.startswith("loose ")}
    assert "ESCAPED" in lines["res.file-size"], proc.stdout
    assert "ok" in lines["res.memory"].split()[1], proc.stdout
    assert "0 escaped" not in proc.stdout


def test_usage_errors(tmp_path: Path, spec_dir: Path) -> None:
    proc = _hostile(tmp_path / "state", spec_dir, "ghost")
    assert proc.returncode == 2 and "no spec file" in proc.stderr and "Traceback" not in proc.stderr
    proc = _hostile(tmp_path / "state", spec_dir, "--only", "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr
