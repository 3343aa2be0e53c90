"""What two releases differ in: the unified diff of their spec texts, and per bot whether it was
added, removed or changed (and which fields), with the same logic as ``up``'s plan
(:func:`clawpen.daemon.release.release_plan`). Pure, apart from parsing the stored spec texts.

A bot's policy is its spec section as JSON with the spec's folder (``base_dir``): what the
daemon stores and hashes (:func:`clawpen.daemon.store.policy_hash`), so a release's per-bot
hashes compare with the running bots' stored ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

from clawpen.daemon.release import Current, Wanted, changed_fields, release_plan
from clawpen.daemon.store import policy_hash
from clawpen.errors import ClawpenError, ConfigError
from clawpen.spec.loader import LoadedSpec, parse_spec_text

Kind = Literal["added", "removed", "changed", "unchanged"]
KINDS: dict[str, Kind] = {"create": "added", "remove": "removed", "recreate": "changed"}
MAX_DIFF_LINES = 5000  # of the spec texts' unified diff (a spec is at most a few MiB)


class BotDiff(NamedTuple):
    bot: str
    change: Kind
    fields: tuple[str, ...]  # dotted names of what changed ("the spec's folder" for base_dir)
    why: str


def bot_policy(loaded: LoadedSpec, name: str) -> dict[str, Any]:
    """Bot ``name``'s policy as the daemon stores it: ``{"spec": {...}, "base_dir": "..."}``."""
    spec = loaded.spec.bots[name].model_dump(mode="json", by_alias=True)
    return {"spec": spec, "base_dir": str(loaded.base_dir)}


def policies(loaded: LoadedSpec) -> dict[str, dict[str, Any]]:
    return {name: bot_policy(loaded, name) for name in sorted(loaded.spec.bots)}


def stored_spec(release: Mapping[str, Any]) -> LoadedSpec:
    """A release's spec text parsed again, as if read from its spec file (relative paths resolve
    against that file's folder); ConfigError when it does not parse by this clawpen's rules."""
    return parse_spec_text(str(release["spec_text"]), Path(str(release["spec_path"])))


def try_policies(release: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """``(policies, None)``, or ``(None, why)`` when the stored spec no longer parses."""
    try:
        return policies(stored_spec(release)), None
    except ClawpenError as err:
        return None, f"{err} ({err.where})" if err.where else str(err)


def text_diff(a: Mapping[str, Any], b: Mapping[str, Any], limit: int = MAX_DIFF_LINES) -> str:
    """The unified diff of two releases' spec texts (``release A`` -> ``release B``)."""
    lines = list(
        difflib.unified_diff(
            str(a["spec_text"]).splitlines(keepends=True),
            str(b["spec_text"]).splitlines(keepends=True),
            fromfile=f"release {a['id']} ({a['spec_path']})",
            tofile=f"release {b['id']} ({b['spec_path']})",
        )
    )
    cut = len(lines) > limit
    lines = lines[:limit]
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return text + (f"... (diff cut at {limit} lines)\n" if cut else "")


def bot_diff(old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]) -> list[BotDiff]:
    """Per bot: added, removed, changed (with the changed fields) or unchanged, from ``old``'s
    policies to ``new``'s, sorted by name (the ``why`` is ``up``'s)."""
    current = {n: Current(policy_hash(dict(p)), p, ("running",), (True,)) for n, p in old.items()}
    wanted = {n: Wanted(policy_hash(dict(p)), p) for n, p in new.items()}
    out: list[BotDiff] = []
    for change in release_plan(current, wanted).changes:
        kind = KINDS.get(change.action, "unchanged")
        fields: tuple[str, ...] = ()
        if kind == "changed":
            a, b = old[change.bot], new[change.bot]
            found = changed_fields(a.get("spec"), b.get("spec"))
            if a.get("base_dir") != b.get("base_dir"):
                found.append("the spec's folder")
            fields = tuple(found)
        why = "unchanged" if kind == "unchanged" else change.why
        out.append(BotDiff(change.bot, kind, fields, why))
    return out


def folder_of(release: Mapping[str, Any]) -> Path:
    """The folder a release's relative paths resolve against; ConfigError if it is gone."""
    folder = Path(str(release["spec_path"])).parent
    if not folder.is_dir():
        raise ConfigError(
            f"release {release['id']}'s spec folder {folder} does not exist any more: its relative "
            "paths (workspaces, builds) cannot resolve",
            where=str(release["spec_path"]),
            hint="restore that folder (the spec file itself is not needed), or `clawpen up -f` a spec "
            "written for another folder",
        )
    return folder


def with_contents(
    bots: list[dict[str, Any]], old: Mapping[str, dict[str, Any]], new: Mapping[str, dict[str, Any]]
) -> None:
    """Add to ``bots`` (:func:`bot_diff` rows) what changed in a bot's recorded contents (a code
    folder's or the build output's hash) although its spec section may not have: such a bot is
    ``changed``, the content changes among its fields."""
    from clawpen.daemon.contents import content_changes

    for row in bots:
        found = content_changes(old.get(row["bot"]), new.get(row["bot"]))
        if not found or row["change"] not in ("changed", "unchanged"):
            continue
        if row["change"] == "unchanged":
            row["change"], row["why"] = "changed", "; ".join(found)
        row["fields"] = [*row["fields"], *found]
