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

    def __call__(self, item: Any) -> None:
        if not isinstance(item, dict):
            return
        if "build" in item:
            self.drawn = 0  # the block starts again below the build's lines
            self.lines.clear()
            self._print(f"  {self.safe(str(item['build']))}")
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
        up = f"\x1b[{self.drawn}F" if self.drawn else ""  # to the block's first line
        body = "".join(f"\x1b[2K{line}\n" for line in self.lines.values())
        self.out.write(up + body)
        self.out.flush()
        self.drawn = len(self.lines)
