"""Loading ``clawpen.toml``: TOML syntax errors and validation errors become one
:class:`~clawpen.errors.ConfigError` that names the file, the line and the key path.

Whatever the file holds, loading ends in a valid spec or a ConfigError: a file above
:data:`MAX_SPEC_BYTES`, bytes that are not UTF-8, TOML nested deeper than :data:`MAX_DEPTH`
(which would otherwise exhaust Python's recursion limit in the parser) are refused with the
place and the fix."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clawpen.errors import ConfigError, PolicyError
from clawpen.spec import rules, units

if TYPE_CHECKING:
    from pydantic import ValidationError

    from clawpen.spec.models import Spec

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_INLINE_KEY = re.compile(r"""[{,]\s*([A-Za-z0-9_-]+|"[^"]*")\s*=""")
_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
_TOML_END = re.compile(r"\(at end of document\)")
MAX_SPEC_BYTES = 1 << 20  # a spec of a thousand bots is ~100 KiB
MAX_DEPTH = 32  # the schema's deepest key is 6 levels down


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with where it came from (relative paths resolve against ``base_dir``)."""

    spec: Spec
    path: Path
    base_dir: Path
    text: str


def _dotted(key: str) -> list[str]:
    """``a."b.c".d`` -> ``["a", "b.c", "d"]`` (dots inside quotes do not split; linear time)."""
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    for char in key:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == ".":
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip().strip("\"'") for part in parts]


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every key path in a TOML text to the line (1-based) where it is written."""
    lines: dict[tuple[str, ...], int] = {}
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _dotted(header.group(1))
            lines.setdefault(tuple(table), number)
            continue
        key = _KEY.match(line)
        if not key:
            continue
        path = (*table, *_dotted(key.group(1)))
        lines.setdefault(path, number)
        rest = line[key.end() :]
        for inner in _INLINE_KEY.finditer(rest):
            lines.setdefault((*path, inner.group(1).strip("\"'")), number)
    return lines


def locate(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The line of the deepest known prefix of ``loc``, or None."""
    known = key_lines(text)
    path = tuple(str(p) for p in loc if not isinstance(p, int))
    while path:
        if path in known:
            return known[path]
        path = path[:-1]
    return None


def load_spec(path: str | Path) -> LoadedSpec:
    """Read, parse and validate a spec file, or raise a ConfigError saying where and how to fix."""
    file = Path(path)
    try:
        with file.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"spec file {file} does not exist",
            where=str(file),
            hint="run `clawpen init` to write one, or pass -f PATH",
        ) from None
    except OSError as err:
        raise ConfigError(
            f"cannot read spec file {file}: {err.strerror or err}",
            where=str(file),
            hint="check the path and its permissions",
        ) from None
    return parse_spec_text(_decode(data, file), file)


def _check_size(size: int, file: Path) -> None:
    if size > MAX_SPEC_BYTES:
        raise ConfigError(
            f"spec file {file} is larger than {MAX_SPEC_BYTES >> 20} MiB",
            where=str(file),
            hint="a spec describes bots, not data: keep data in files the bots mount",
        )


def _decode(data: bytes, file: Path) -> str:
    _check_size(len(data), file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError(
            f"{file.name} is not valid UTF-8: byte 0x{data[err.start]:02x} does not fit in a character",
            where=f"{file}:{line}:{column}",
            hint="save the file as UTF-8 (TOML files are UTF-8)",
        ) from None


def _depth(data: object) -> int:
    """How deeply tables and arrays nest in ``data`` (iterative: no recursion limit)."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def _too_deep(file: Path) -> ConfigError:
    return ConfigError(
        f"{file.name} nests tables or arrays more than {MAX_DEPTH} levels deep",
        where=str(file),
        hint="the spec's deepest key is a few levels down: check for a runaway [ or {",
    )


def parse_spec_text(text: str, file: Path) -> LoadedSpec:
    """Parse and validate ``text`` as if read from ``file`` (relative paths resolve against its
    folder); raises ConfigError saying where and how to fix."""
    from pydantic import ValidationError

    from clawpen.spec.models import Spec

    _check_size(len(text), file)  # also for a spec that comes as text (a stored release)
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise _too_deep(file) from None
    except tomllib.TOMLDecodeError as err:
        pos = _TOML_POS.search(str(err))
        if pos:
            where = f"{file}:{pos.group(1)}:{pos.group(2)}"
        elif "end of document" in str(err):
            where = f"{file}:{len(text.splitlines())}"
        else:
            where = str(file)
        message = _TOML_END.sub("", _TOML_POS.sub("", str(err))).strip()
        raise ConfigError(
            f"{file.name} is not valid TOML: {message}", where=where, hint="fix the TOML syntax at that line"
        ) from None
    if _depth(data) > MAX_DEPTH:
        raise _too_deep(file)
    base_dir = file.resolve().parent
    try:
        spec = Spec.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as err:
        raise _from_validation(err, file, text) from None
    except RecursionError:
        raise _too_deep(file) from None
    return LoadedSpec(spec=spec, path=file, base_dir=base_dir, text=text)


def _from_validation(err: ValidationError, file: Path, text: str) -> ConfigError:
    problems: list[tuple[str, str, str | None, bool]] = []
    for item in err.errors(include_url=False):
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = locate(text, loc)
        where = f"{file}:{line} {key}" if line else f"{file} {key}"
        cause = (item.get("ctx") or {}).get("error")
        hint: str | None = None
        is_policy = isinstance(cause, rules.RuleViolation)
        if isinstance(cause, rules.RuleViolation | units.UnitError):
            message, hint = str(cause), cause.hint
        else:
            message = item["msg"].removeprefix("Value error, ")
            hint = _hint_for(item["type"], loc)
        problems.append((message, where, hint, is_policy))
    message, where, hint, is_policy = problems[0]
    if len(problems) > 1:
        extra = "".join(f"\n  - {m} ({w})" for m, w, _, _ in problems[1:])
        message = f"{message}{extra}"
    cls = PolicyError if is_policy else ConfigError
    return cls(message, where=where, hint=hint)


def _hint_for(kind: str, loc: tuple[str | int, ...]) -> str | None:
    if kind == "extra_forbidden":
        return f"remove {loc[-1]!r} or check its spelling; `clawpen schema` lists every key"
    if kind == "missing":
        return f"add {loc[-1]} = ... ; `clawpen schema` describes it"
    if kind.startswith("literal_error"):
        return "use one of the values listed"
    return "see `clawpen schema` for the expected type"
