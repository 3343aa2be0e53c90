"""`up`'s progress on the command line: one updating line per bot on a terminal, plain lines
on a pipe; `ps`'s memory cell."""

from __future__ import annotations

import io

from clawpen.cli_progress import UpProgress, human_size, mem_cell


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


WAY = [
    {"waiting": {"web": "starting", "db": "starting"}},
    {
        "waiting": {
            "web": "running, health starting (last check: connection refused, 0 s ago)",
            "db": "starting",
        }
    },
    {"wait": "db: running"},
    {"waiting": {"web": "running, health starting (last check: connection refused, 1 s ago)"}},
    {"wait": "web: running, healthy"},
]


def test_on_a_pipe_each_change_is_one_plain_line() -> None:
    out = io.StringIO()
    show = UpProgress(out)
    assert not show.live  # a StringIO is not a terminal
    for item in WAY:
        show(item)
    assert out.getvalue().splitlines() == [
        "  web: starting",
        "  db: starting",
        "  web: running, health starting (last check: connection refused, 0 s ago)",
        "  db: running",
        "  web: running, health starting (last check: connection refused, 1 s ago)",
        "  web: running, healthy",
    ]  # the unchanged "db: starting" of the second item is not repeated


def test_on_a_terminal_each_bot_keeps_one_line_updated_in_place() -> None:
    out = Tty()
    show = UpProgress(out)
    assert show.live
    for item in WAY:
        show(item)
    text = out.getvalue()
    # every redraw after the first goes back up over the two lines of the block
    assert text.count("\x1b[2F") == len(WAY) - 1 and "\x1b[1F" not in text
    screen = render(text)
    assert screen == ["  web: running, healthy", "  db: running"]


def test_build_lines_come_before_the_block_and_text_is_made_safe() -> None:
    out = Tty()
    show = UpProgress(out)
    show({"build": "web: npm install (12 MB, 30 s)"})
    show({"waiting": {"web": "starting\x1b[31m"}})
    assert out.getvalue().startswith("  web: npm install (12 MB, 30 s)\n")
    assert "\x1b[31m" not in out.getvalue()  # the bot's text cannot move the cursor or colour


def render(text: str) -> list[str]:
    """What a terminal shows after ``text`` (only the sequences UpProgress writes: ESC[nF, ESC[2K)."""
    import re

    lines: list[str] = []
    row = 0
    for token in re.split(r"(\x1b\[\d+F|\x1b\[2K|\n)", text):
        if not token:
            continue
        if m := re.fullmatch(r"\x1b\[(\d+)F", token):
            row -= int(m.group(1))
        elif token == "\x1b[2K":
            while len(lines) <= row:
                lines.append("")
            lines[row] = ""
        elif token == "\n":
            row += 1
        else:
            while len(lines) <= row:
                lines.append("")
            lines[row] += token
    return [line for line in lines if line]


def test_human_sizes_and_the_memory_cell() -> None:
    assert [human_size(n) for n in (512, 851443712, 1288490188, 2 << 30, 64 << 20)] == [
        "512",
        "812M",
        "1.2G",
        "2G",
        "64M",
    ]
    assert mem_cell({"pid": 7, "memory_bytes": 851443712, "memory_limit": 2 << 30}) == "812M/2G"
    assert mem_cell({"pid": None, "memory_bytes": None, "memory_limit": 2 << 30}) == "-"
    assert mem_cell({"pid": 7, "memory_bytes": 5 << 20, "memory_limit": None}) == "5M"
