"""Bot-controlled text on a terminal: every control sequence is shown, none is obeyed."""

from __future__ import annotations

import io
import json
import os
import pty
import re

import pytest

from clawpen import termsafe
from clawpen.cli_net import render
from clawpen.termsafe import clean, clean_for, escape, escape_bytes, for_stream

ESC = "\x1b"
BEL = "\x07"
# What a terminal would obey: any C0 control but tab, DEL, any C1 control, the bidi controls.
OBEYED = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        (f"{ESC}]0;pwned title{BEL}", "\\x1b]0;pwned title\\x07"),  # OSC 0: the window title
        (f"{ESC}]52;c;ZWNobyBwd25lZA=={BEL}", "\\x1b]52;c;ZWNobyBwd25lZA==\\x07"),  # OSC 52: the clipboard
        (f"{ESC}]52;c;aGk={ESC}\\", "\\x1b]52;c;aGk=\\x1b\\"),  # OSC 52 ended by ST (ESC \\)
        (f"{ESC}[2J{ESC}[H", "\\x1b[2J\\x1b[H"),  # CSI: clear the screen, cursor home
        ("\u009b2J", "\\u009b2J"),  # C1 CSI (U+009B) without an ESC
        ("\u009d0;t\u009c", "\\u009d0;t\\u009c"),  # C1 OSC ... ST
        ("ok\rFAKE", "ok\\x0dFAKE"),  # a carriage return overwrites what was shown
        ("one\nfake line", "one\\x0afake line"),  # a newline inside a field fakes a line
        ("a\x00b\x7fc\x08d", "a\\x00b\\x7fc\\x08d"),
        ("user\u202eexe.txt", "user\\u202eexe.txt"),  # RLO: reads as "usertxt.exe"
        (
            "\u2066\u2067x\u2068\u2069\u202a\u202b\u202c\u202d",
            "\\u2066\\u2067x\\u2068\\u2069\\u202a\\u202b\\u202c\\u202d",
        ),
    ],
)
def test_escape_shows_every_control_sequence(hostile: str, shown: str) -> None:
    assert escape(hostile) == shown
    assert OBEYED.search(escape(hostile)) is None
    assert OBEYED.search(hostile) is not None  # control: the input did carry one


def test_valid_text_is_left_as_it_is() -> None:
    for text in (
        "",
        "plain ascii, with\ttabs and [bold]brackets[/bold] and \\x1b as text",
        "Grüße, 日本語, العربية, emoji 🦀, combining é, zero width\u200bspace",
        "a long line " * 1000,
    ):
        assert escape(text) is text  # the fast path: not even a copy


def test_bytes_that_are_not_utf8_are_shown_as_hex_not_dropped() -> None:
    raw = b"ok \x9b2J \xff\xfe \xc3\xa9 \x1b[31m"
    assert escape_bytes(raw) == "ok \\x9b2J \\xff\\xfe \u00e9 \\x1b[31m"
    # the same bytes decoded with surrogateescape by a caller
    assert escape(raw.decode("utf-8", "surrogateescape")) == escape_bytes(raw)
    assert escape(b"\xed\xa0\x80".decode("utf-8", "surrogateescape")) == "\\xed\\xa0\\x80"


def test_for_stream_escapes_on_a_terminal_only_and_raw_wins() -> None:
    hostile = f"{ESC}]0;title{BEL}"
    pipe = io.StringIO()
    assert for_stream(pipe)(hostile) == hostile  # a pipe or a file: exact
    primary, secondary = pty.openpty()
    try:
        with open(secondary, "w", closefd=False) as tty:
            assert termsafe.is_terminal(tty)
            assert for_stream(tty)(hostile) == "\\x1b]0;title\\x07"
            assert for_stream(tty, raw=True)(hostile) == hostile
            assert clean_for(tty, {"a": [hostile, 3]}) == {"a": ["\\x1b]0;title\\x07", 3]}
    finally:
        os.close(primary)
        os.close(secondary)
    closed = io.StringIO()
    closed.close()
    assert not termsafe.is_terminal(closed)


def test_clean_reaches_every_string_of_a_reply_and_keeps_the_rest() -> None:
    reply = {"bot": "b", f"k{ESC}": [{"reason": f"x{ESC}[2J", "pid": 7, "ok": True, "none": None}], "n": 1.5}
    assert clean(reply) == {
        "bot": "b",
        "k\\x1b": [{"reason": "x\\x1b[2J", "pid": 7, "ok": True, "none": None}],
        "n": 1.5,
    }
    assert json.dumps(reply)  # (the --json path prints the reply itself: json escapes controls)
    assert ESC not in json.dumps(reply)


def test_net_log_line_escapes_a_hostile_dns_name() -> None:
    row = {
        "id": 1,
        "at": 1_700_000_000.0,
        "bot": "web",
        "replica": 0,
        "kind": "dns",
        "verdict": "denied",
        "host": f"{ESC}]0;owned{BEL}.example.com",
        "port": 0,
        "up": 0,
        "down": 0,
        "duration": 0.0,
        "reason": "not allowed\u202e",
    }
    line = render(row)
    assert OBEYED.search(line) is None and "\\x1b]0;owned\\x07.example.com" in line
    assert render(row, termsafe.exact).count(ESC) == 1  # --raw: exact


def test_top_prints_a_bracketed_name_literally_not_as_rich_markup() -> None:
    from rich.console import Console

    from clawpen.cli_metrics import render_top

    name = f"[bold red]x[/bold red]{ESC}[2J"
    data = {"host": {}, "bots": {name: {"cpu_percent": 1.0}}, "states": {name: "[blink]running"}}
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system="standard").print(render_top(data, "cpu"))
    text = out.getvalue()
    assert "[bold red]x[/bold red]\\x1b[2J" in text and "[blink]running" in text
    # control: the same text as markup would have been styled (the brackets vanish)
    styled = io.StringIO()
    Console(file=styled, width=200, force_terminal=True, color_system="standard").print(
        "[bold red]x[/bold red]"
    )
    assert "[bold red]" not in styled.getvalue()
