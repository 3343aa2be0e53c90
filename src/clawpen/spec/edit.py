"""Small in-place edits of a ``clawpen.toml`` text that keep its comments and layout (tomlkit).

Only what ``clawpen secrets add-to`` needs: add a name to a string array (``secrets``,
``secret_env``) of one bot. The result is parsed again and must equal the old data with the name
added, else nothing is written and the caller is told to edit by hand.
"""

from __future__ import annotations

import tomllib
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from clawpen.errors import ConfigError


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
    try:
        doc = tomlkit.parse(text)
        node = doc["bots"][bot]
    except (TOMLKitError, KeyError) as err:
        raise _cannot(bot, f"tomlkit cannot read it ({err})") from None
    expected = {k: list(table.get(k, [])) for k in ("secrets", "secret_env")}
    for key in ("secrets", "secret_env") if env else ("secrets",):
        if name in expected[key]:
            continue
        current = node.get(key)
        if current is None:
            node[key] = [name]
        elif isinstance(current, list):
            current.append(name)
        else:
            raise _cannot(bot, f"{key} is not written as an array")
        expected[key].append(name)
    new = tomlkit.dumps(doc)
    try:
        after = tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        raise _cannot(bot, "the edited text would not parse") from None
    want = {**data}
    want["bots"] = {**data["bots"], bot: {**table, **{k: v for k, v in expected.items() if v}}}
    if after != want:
        raise _cannot(bot, "the edited text would not mean what was asked")
    return new
