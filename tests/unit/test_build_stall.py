"""``[bots.NAME.build] stall``: its bounds, its default, that it is not part of the cache key; the
progress line the CLI prints; the URL and silence a stall error names."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from clawpen.cli_progress import UpProgress, build_progress_line
from clawpen.daemon.build_steps import cache_key
from clawpen.daemon.build_watch import StepRun, stall_message, step_label
from clawpen.errors import ClawpenError
from clawpen.spec.build import BuildSpec
from clawpen.spec.loader import load_spec


def _spec(tmp_path: Path, build: str) -> Path:
    path = tmp_path / "clawpen.toml"
    path.write_text(f'[bots.b]\ncommand = ["true"]\n[bots.b.build]\nsteps = [["sh", "-c", "x"]]\n{build}\n')
    return path


def _build(tmp_path: Path, build: str) -> BuildSpec:
    found = load_spec(_spec(tmp_path, build)).spec.bots["b"].build
    assert isinstance(found, BuildSpec)
    return found


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("", 120.0),
        ('stall = "10s"', 10.0),
        ('stall = "1h"', 3600.0),
        ('stall = "0"', 0.0),
        ("stall = 0", 0.0),
    ],
)
def test_stall_values(tmp_path: Path, raw: str, seconds: float) -> None:
    assert _build(tmp_path, raw).stall == seconds


@pytest.mark.parametrize(
    ("raw", "message"),
    [('stall = "9s"', "10s"), ('stall = "2h"', "1h"), ('stall = "soon"', "soon"), ('stall = "-5s"', "")],
)
def test_bad_stall_does_not_load(tmp_path: Path, raw: str, message: str) -> None:
    with pytest.raises(ClawpenError) as err:
        load_spec(_spec(tmp_path, raw))
    assert "stall" in str(err.value.where) + str(err.value), (str(err.value), err.value.where)
    assert message in str(err.value) + str(err.value.hint)


def test_stall_is_not_in_the_cache_key(tmp_path: Path) -> None:
    base = cache_key(_build(tmp_path, ""), str(tmp_path))
    assert cache_key(_build(tmp_path, 'stall = "30s"'), str(tmp_path)) == base
    assert cache_key(_build(tmp_path, 'stall = "0"'), str(tmp_path)) == base
    assert cache_key(_build(tmp_path, 'env = { A = "1" }'), str(tmp_path)) != base  # control


def test_stall_message_names_silence_last_line_and_url() -> None:
    run = StepRun(
        stalled=12.4,
        last_line="npm http fetch GET 200 https://registry.npmjs.org/x 30ms",
        last_url="https://registry.npmjs.org/x",
    )
    text = stall_message(run)
    assert (
        "12 s" in text
        and "registry.npmjs.org/x 30ms" in text
        and "last URL: https://registry.npmjs.org/x" in text
    )
    assert "last URL" not in stall_message(StepRun(stalled=10.0))
    assert step_label(["npm", "install", "--loglevel", "http"]) == "npm install"


def test_progress_line() -> None:
    line = build_progress_line(
        {
            "bot": "oc",
            "step": 2,
            "steps": 3,
            "command": "npm install",
            "elapsed": 35.2,
            "rx_bytes": 12_500_000,
            "lines": 4,
            "last": "added 3",
            "quiet": 12.0,
        }
    )
    assert line == "build oc: step 2/3 npm install: 35 s, 12.5 MB received, silent 12 s | added 3"
    no_net = build_progress_line(
        {
            "bot": "oc",
            "step": 1,
            "steps": 1,
            "command": "sh -c",
            "elapsed": 5,
            "rx_bytes": None,
            "lines": 7,
            "last": "",
            "quiet": 1,
        }
    )
    assert no_net == "build oc: step 1/1 sh -c: 5 s, 7 lines"
    small = build_progress_line(
        {"bot": "oc", "step": 1, "steps": 1, "command": "x", "elapsed": 5, "rx_bytes": 32768}
    )
    assert small == "build oc: step 1/1 x: 5 s, 33 kB received"


class _Term(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_progress_on_a_terminal_is_one_line_and_plain_lines_otherwise(
    monkeypatch: pytest.MonkeyPatch, tty: bool
) -> None:
    out = _Term(tty)
    show_progress = UpProgress(out)
    tick = {"bot": "oc", "step": 1, "steps": 1, "command": "npm install", "elapsed": 5, "rx_bytes": 2_000_000}
    show_progress({"build_progress": tick})
    show_progress({"build_progress": {**tick, "elapsed": 10}})
    show_progress({"build": "build oc: done in 11.0 s"})
    text = out.getvalue()
    if tty:  # rewritten in place, cleared before the next plain line
        assert text.count("\n") == 1 and text.count("\r\x1b[K") == 3, repr(text)
        assert text.endswith("\r\x1b[K  build oc: done in 11.0 s\n")
    else:
        assert "\r" not in text and "\x1b" not in text
        assert text.splitlines() == [
            "  build oc: step 1/1 npm install: 5 s, 2.0 MB received",
            "  build oc: step 1/1 npm install: 10 s, 2.0 MB received",
            "  build oc: done in 11.0 s",
        ]
