"""Releases hold what their bots ran (issue 15, items 1 and 2) against a real daemon: the content
hash of a bot's code folder and its build output are recorded and shown; `diff` names a code
folder that changed under an unchanged spec; `rollback` re-uses the kept build output (no build
step runs) and rebuilds a pruned one, warning when its content differs; `keep = 1` prunes to one
output but never the one the bot runs."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DaemonCli, wait_for

from clawpen.daemon.contents import tree_hash
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SPEC = """
[bots.app]
command = ["sh", "-c", "cat /opt/bot/ver; cat /code/main.txt; sleep 600"]
filesystem = {{ ro = ["./code:/code"] }}
[bots.app.build]
steps = [["sh", "-c", "echo {ver} > /opt/bot/ver; cat /proc/sys/kernel/random/uuid > /opt/bot/stamp"]]
timeout = "30s"
{keep}
"""


@pytest.fixture
def cdaemon() -> Iterator[DaemonCli]:
    base = Path(tempfile.mkdtemp(prefix="clawpen-c-", dir="/tmp"))
    base.chmod(0o755)
    spec_dir = base / "spec"
    (spec_dir / "code").mkdir(mode=0o755, parents=True)
    spec_dir.chmod(0o755)
    d = DaemonCli(base / "state", spec_dir, UID_BASE)
    try:
        yield d
    finally:
        d.shutdown()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _up(d: DaemonCli, ver: str, keep: str = "") -> None:
    d.write(SPEC.format(ver=ver, keep=keep))
    d.cli("up", timeout=120)


def _built(d: DaemonCli) -> list[str]:
    return [e["reason"] for e in d.events("app") if e["kind"] == "build" and "built in" in e["reason"]]


def _outputs(d: DaemonCli) -> set[str]:
    bot_dir = Path(f"{d.home}-build") / "app"
    return {
        p.name for p in bot_dir.iterdir() if p.is_dir() and p.name != "cache" and not p.name.startswith(".")
    }


def _bot(d: DaemonCli, number: int) -> dict[str, Any]:
    shown = d.json("release", "show", str(number))
    assert isinstance(shown, dict)
    (bot,) = shown["bots"]
    return dict(bot)


def test_contents_recorded_diffed_and_rolled_back(cdaemon: DaemonCli) -> None:
    d = cdaemon
    code = d.spec.parent / "code"
    (code / "main.txt").write_text("code-1\n")
    _up(d, "v1")  # release 1
    one = _bot(d, 1)
    assert one["folders"] == [{"source": "./code", "target": "/code", "hash": tree_hash(code), "state": "ok"}]
    key1 = one["build"]["key"]
    out1 = Path(f"{d.home}-build") / "app" / key1
    meta = json.loads((out1 / ".clawpen-build").read_text())
    assert one["build"]["output_hash"] == meta["output_hash"] == tree_hash(out1, skip=(".clawpen-build",))
    assert one["build"]["kept"] is True
    shown = d.cli("release", "show", "1").stdout
    assert f"folder ./code -> /code: {tree_hash(code)}" in shown and "kept" in shown
    # the code changes, the spec does not: `diff` names it
    (code / "main.txt").write_text("code-2\n")
    _up(d, "v1")  # release 2
    diff = d.json("diff", "1", "2")
    assert isinstance(diff, dict)
    assert diff["bots"] == [
        {
            "bot": "app",
            "change": "changed",
            "fields": ["content of ./code changed"],
            "why": "content of ./code changed",
        }
    ]
    assert "content of ./code changed" in d.cli("diff", "1", "2").stdout
    # control: two releases with the same contents are not called changed
    _up(d, "v1")  # release 3
    assert d.json("diff", "2", "3")["bots"][0]["change"] == "unchanged"  # type: ignore[index]
    _up(d, "v2")  # release 4: a new build
    assert len(_built(d)) == 2
    assert _outputs(d) == {key1, _bot(d, 4)["build"]["key"]}
    # rollback to release 1: the kept output again, no build step runs; the code folder differs
    back = d.json("rollback", "1")
    assert isinstance(back, dict)
    assert len(_built(d)) == 2, _built(d)
    assert any(
        key1 in e["reason"] and "cached" in e["reason"] for e in d.events("app") if e["kind"] == "build"
    )
    assert len(back["warnings"]) == 1 and "./code differs from release 1" in back["warnings"][0], back
    assert _bot(d, 5)["build"] == one["build"]  # the very output release 1 ran
    assert wait_for(lambda: "v1" in d.cli("logs", "app").stdout, 10)


def test_keep_prunes_but_never_the_running_output_and_a_pruned_one_is_rebuilt(cdaemon: DaemonCli) -> None:
    d = cdaemon
    (d.spec.parent / "code" / "main.txt").write_text("same\n")
    _up(d, "v1")  # release 1
    key1 = _bot(d, 1)["build"]["key"]
    _up(d, "v2")  # release 2
    key2 = _bot(d, 2)["build"]["key"]
    d.cli("rollback", "1")  # release 3 runs key1 again (marked as used)
    _up(d, "v3", "keep = 1")  # release 4: keep one; key1 still ran while key3 was built
    key3 = _bot(d, 4)["build"]["key"]
    assert _outputs(d) == {key1, key3}  # key2 (least recently used) pruned, key1 was running
    _up(d, "v3", "keep = 1")  # release 5: nothing to build; now key3 runs, key1 goes
    assert _outputs(d) == {key3}
    # keep = 1 and a rollback builds again; the output the bot runs is kept until it runs another
    before = len(_built(d))
    rb = d.cli("rollback", "2", timeout=120)  # release 6: key2 was pruned -> rebuilt
    assert len(_built(d)) == before + 1
    assert "build output was rebuilt and differs from release 2's" in rb.stderr, rb.stderr
    assert "./code" not in rb.stderr  # the code folder did not change: no warning for it
    assert _outputs(d) == {key2, key3}  # key3 ran when key2 was built: never pruned then
    assert _bot(d, 4)["build"]["kept"] is True and _bot(d, 1)["build"]["kept"] is False
    # changing only `keep` restarts nothing (not part of the build key nor of the policy hash)
    d.wait_state("app", "running")
    pid = d.ps()["app"]["pid"]
    _up(d, "v2", "keep = 2")
    assert d.ps()["app"]["pid"] == pid
    assert _bot(d, 7)["build"]["key"] == key2
