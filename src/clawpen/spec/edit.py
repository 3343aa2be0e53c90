"""Small in-place edits of a ``clawpen.toml`` text that keep its comments and layout.

Only what ``clawpen secrets add-to`` needs: add a name to a string array (``secrets``,
``secret_env``) of one bot's own ``[bots.NAME]`` table. The edit touches the array's text alone
(or adds one line after the table's header); the result is parsed again and must equal the old
data with the name added, else nothing is written and the caller is told to edit by hand.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from clawpen.errors import ConfigError

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _table_range(lines: list[str], bot: str) -> tuple[int, int] | None:
    """Lines [header, end) of the ``[bots.BOT]`` table itself (its sub-tables excluded)."""
    start = None
    for i, line in enumerate(lines):
        header = _HEADER.match(line)
        if not header:
            continue
        if start is not None:
            return start, i
        parts = [p.strip().strip("\"'") for p in header.group(1).split(".")]
        if parts == ["bots", bot] and not line.lstrip().startswith("[["):
            start = i
    return None if start is None else (start, len(lines))


def _array_end(text: str, start: int) -> int | None:
    """Index of the ``]`` closing the array that opens at ``text[start] == "["``."""
    depth, i, quote = 0, start, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl
            continue
        elif c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _with_item(array: str, name: str) -> str:
    """``array`` (``[...]`` text) with ``"name"`` appended before its closing bracket."""
    body = array[1:-1]
    stripped = _strip_comments(body).strip()
    item = json.dumps(name)
    if not stripped:
        return f"[{item}]"
    head = body.rstrip()
    tail = body[len(head) :]
    if "\n" in tail:  # a multi-line array: a line of its own, indented like the last item
        last = head.splitlines()[-1]
        indent = last[: len(last) - len(last.lstrip())] or "    "
        sep = "" if stripped.endswith(",") else ","
        return f"[{head}{sep}\n{indent}{item},{tail}]"
    sep = " " if stripped.endswith(",") else ", "
    return f"[{head}{sep}{item}{tail}]"


def _strip_comments(body: str) -> str:
    out, quote = [], ""
    i = 0
    while i < len(body):
        c = body[i]
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            nl = body.find("\n", i)
            i = len(body) if nl < 0 else nl
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _add_to_key(text: str, bot: str, key: str, name: str) -> str:
    lines = text.splitlines(keepends=True)
    span = _table_range(lines, bot)
    if span is None:
        raise _cannot(bot, f"there is no [bots.{bot}] table to edit")
    start, end = span
    offset = sum(len(line) for line in lines[:start])
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*=\s*")
    for i in range(start + 1, end):
        found = key_re.match(lines[i])
        if found:
            pos = offset + sum(len(line) for line in lines[start:i]) + found.end()
            if not text.startswith("[", pos):
                raise _cannot(bot, f"{key} is not written as an array")
            close = _array_end(text, pos)
            if close is None:
                raise _cannot(bot, f"the {key} array does not close")
            return text[:pos] + _with_item(text[pos : close + 1], name) + text[close + 1 :]
    # no such key yet: one line right after the header (keys follow their table's header)
    insert = offset + len(lines[start])
    newline = "" if lines[start].endswith("\n") else "\n"
    return f"{text[:insert]}{newline}{key} = {json.dumps([name])}\n{text[insert:]}"


def _cannot(bot: str, why: str) -> ConfigError:
    return ConfigError(
        f"cannot edit the spec in place: {why}",
        where=f"bots.{bot}",
        hint="add the name to the bot's `secrets` (and `secret_env`) by hand",
    )


def add_secret(text: str, bot: str, name: str, *, env: bool) -> str:
    """``text`` with ``name`` in ``[bots.BOT].secrets`` (and ``secret_env`` if ``env``), where it
    is not there yet. Raises ConfigError when the text cannot be edited safely."""
    data: dict[str, Any] = tomllib.loads(text)
    table = data.get("bots", {}).get(bot)
    if not isinstance(table, dict):
        raise _cannot(bot, f"no bot {bot}")
    new = text
    expected = {k: list(table.get(k, [])) for k in ("secrets", "secret_env")}
    for key in ("secrets", "secret_env") if env else ("secrets",):
        if name not in expected[key]:
            new = _add_to_key(new, bot, key, name)
            expected[key].append(name)
    try:
        after = tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        raise _cannot(bot, "the edited text would not parse") from None
    want = {**data}
    want["bots"] = {**data["bots"], bot: {**table, **{k: v for k, v in expected.items() if v}}}
    if after != want:
        raise _cannot(bot, "the edited text would not mean what was asked")
    return new
