"""How the CLI shows `up`'s progress (build lines, then each bot's way to ready) and sizes."""

from __future__ import annotations

from typing import Any

from clawpen import termsafe


def human_size(n: int) -> str:
    """``851443712`` -> ``812M``, ``1288490188`` -> ``1.2G`` (binary units, at most 3 digits)."""
    value, unit = float(n), ""
    for bigger in ("k", "M", "G", "T"):
        if value < 1000:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f}{unit}" if unit and value < 10 and value != int(value) else f"{value:.0f}{unit}"


def mem_cell(row: dict[str, Any]) -> str:
    """``812M/2G``: the bot's memory now and its limit; ``-`` when it is not running."""
    used, limit = row.get("memory_bytes"), row.get("memory_limit")
    if not isinstance(used, int) or not row.get("pid"):
        return "-"
    return f"{human_size(used)}/{human_size(limit)}" if isinstance(limit, int) and limit else human_size(used)


CLEAR_LINE = "\r\x1b[K"


def build_progress_line(p: dict[str, Any]) -> str:
    """A build step's progress item as one line: step, command, elapsed, bytes (or lines), last line."""
    got = p.get("rx_bytes")
    if isinstance(got, int):
        amount = f"{got / 1e6:.1f} MB received" if got >= 1e6 else f"{got / 1e3:.0f} kB received"
    else:
        amount = f"{p.get('lines', 0)} lines"
    text = (
        f"build {p.get('bot')}: step {p.get('step')}/{p.get('steps')} {p.get('command')}: "
        f"{float(p.get('elapsed') or 0):.0f} s, {amount}"
    )
    quiet = float(p.get("quiet") or 0)
    if quiet >= 10:
        text += f", silent {quiet:.0f} s"
    last = str(p.get("last") or "")
    return text + (f" | {last}" if last else "")


class UpProgress:
    """`up`'s progress on ``out``: build lines as they come; while it waits, one line per bot
    (``openclaw: running, health starting (last check: connection refused, 3 s ago)``), updated
    in place on a terminal (``live``), printed as a new line when it changes otherwise."""

    def __init__(self, out: Any, *, live: bool | None = None) -> None:
        self.out = out
        self.live = out.isatty() if live is None else live
        self.safe = termsafe.for_stream(out)
        self.lines: dict[str, str] = {}  # bot -> its line, in the order first seen
        self.drawn = 0  # lines of the live block on screen
        self.partial = False  # a build's progress line is on screen, without its newline

    def __call__(self, item: Any) -> None:
        if not isinstance(item, dict):
            return
        if "build" in item:
            self.drawn = 0  # the block starts again below the build's lines
            self.lines.clear()
            self._print(f"{CLEAR_LINE if self.partial else ''}  {self.safe(str(item['build']))}")
            self.partial = False
        elif isinstance(item.get("build_progress"), dict):
            line = self.safe(build_progress_line(item["build_progress"]))
            if self.live:  # one line, rewritten in place
                import shutil  # here: `clawpen ps` imports this module for mem_cell alone

                width = shutil.get_terminal_size().columns - 3
                self.out.write(f"{CLEAR_LINE}  {line[:width]}")
                self.out.flush()
                self.partial = True
            else:
                self._print(f"  {line}")
        elif "wait" in item:
            text = str(item["wait"])
            self._update({text.split(":", 1)[0]: text.split(":", 1)[-1].strip()})
        elif isinstance(item.get("waiting"), dict):
            self._update({str(k): str(v) for k, v in item["waiting"].items()})

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _update(self, states: dict[str, str]) -> None:
        changed = {}
        for bot, why in states.items():
            line = f"  {self.safe(bot)}: {self.safe(why)}"
            if self.lines.get(bot) != line:
                changed[bot] = self.lines[bot] = line
        if not self.live:
            for line in changed.values():
                self._print(line)
            return
        if self.partial:  # the build's progress line goes first
            self.out.write(CLEAR_LINE)
            self.partial = False
        up = f"\x1b[{self.drawn}F" if self.drawn else ""  # to the block's first line
        body = "".join(f"\x1b[2K{line}\n" for line in self.lines.values())
        self.out.write(up + body)
        self.out.flush()
        self.drawn = len(self.lines)
