"""Building a bot's image from a Dockerfile through the engine, never from a registry.

No registry is assumed reachable, so the build never pulls: before anything is sent to the
engine, the Dockerfile's ``FROM`` images are looked up locally, and a missing one fails fast with
a hint to build (or load) it (:func:`missing_bases`). The build streams the engine's progress
lines to ``on_line`` as they come; a failure is a :class:`~clawpen.errors.ClawpenError` naming the
Dockerfile line of the step that failed (the engine's ``Step N/M`` counts instructions, which
:func:`instructions` maps back to lines), or the line the engine's parse error names.

Images clawpen builds carry the label ``clawpen.image`` (the bot's name, or ``base``), which
``clawpen image ls`` lists by.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawpen.errors import ConfigError, HostError, SandboxError
from clawpen.spec.container import built_tag

if TYPE_CHECKING:
    import docker

LABEL = "clawpen.image"
BASE_TAG = "clawpen-base:bookworm"
BASE_HINT = "build the base image first: clawpen image build --base"
MAX_DOCKERFILE = 1 << 20  # a Dockerfile larger than 1 MiB is not one

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ENGINE_LINE = re.compile(r"parse error (?:on )?line (\d+)", re.IGNORECASE)
_ARG_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its first line's number, keyword (upper case) and arguments."""

    line: int
    keyword: str
    args: str


@dataclass(frozen=True)
class BuildEvent:
    """One message of the engine's build stream, reduced to what clawpen shows or acts on."""

    kind: str  # "step" (a new instruction), "output", "error", "image" (the built image's id)
    text: str
    step: int = 0


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, with continuation lines (``\\``) joined, comments and
    blank lines skipped and parser directives (``# escape=`)`` honoured for the escape char."""
    escape = "\\"
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    directives = True
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if directives:
            m = re.match(r"^#\s*escape\s*=\s*(\S)\s*$", line, re.IGNORECASE)
            if m:
                escape = m.group(1)
                continue
            if not line.startswith("#") or not re.match(r"^#\s*\w+\s*=", line):
                directives = False
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not pending:
            start = number
        if line.endswith(escape):
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined = " ".join(part.strip() for part in pending if part.strip())
        pending = []
        keyword, _, args = joined.partition(" ")
        found.append(Instruction(start, keyword.upper(), args.strip()))
    if pending:
        joined = " ".join(part.strip() for part in pending if part.strip())
        keyword, _, args = joined.partition(" ")
        found.append(Instruction(start, keyword.upper(), args.strip()))
    return found


def from_images(steps: Iterable[Instruction], where: str = "Dockerfile") -> list[tuple[Instruction, str]]:
    """The images a Dockerfile starts ``FROM`` that are not its own stages nor ``scratch``, with
    their instruction; ``ARG`` defaults before the first ``FROM`` are substituted. A reference
    that still holds a variable is a ConfigError (it cannot be checked to be local)."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[tuple[Instruction, str]] = []
    seen_from = False
    for step in steps:
        if step.keyword == "ARG" and not seen_from:
            name, _, default = step.args.partition("=")
            args[name.strip()] = default.strip().strip("\"'")
        if step.keyword != "FROM":
            continue
        seen_from = True
        words = [w for w in step.args.split() if not w.startswith("--")]
        if not words:
            raise ConfigError(
                "FROM names no image",
                where=f"{where}:{step.line}",
                hint="write e.g. FROM clawpen-base:bookworm",
            )

        def value(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(3)
            return args.get(name) or m.group(2) or "$"  # "$": no value, refused below

        ref = _ARG_REF.sub(value, words[0])
        if "$" in ref or not ref:
            raise ConfigError(
                f"FROM {words[0]} uses a variable with no default",
                where=f"{where}:{step.line}",
                hint="give the ARG a default before the first FROM, so the image can be checked to be local",
            )
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if ref.lower() != "scratch" and ref.lower() not in stages:
            images.append((step, ref))
    return images


def parse_event(message: Mapping[str, Any]) -> BuildEvent | None:
    """One decoded message of the engine's build stream (``{"stream": ...}``, ``{"error": ...}``,
    ``{"aux": {"ID": ...}}``), or None for messages with nothing to show."""
    if "error" in message or "errorDetail" in message:
        detail = message.get("errorDetail") or {}
        text = str(message.get("error") or detail.get("message") or "unknown error").strip()
        return BuildEvent("error", text)
    aux = message.get("aux")
    if isinstance(aux, Mapping) and isinstance(aux.get("ID"), str):
        return BuildEvent("image", aux["ID"])
    stream = message.get("stream")
    if not isinstance(stream, str) or not stream.strip():
        return None
    text = stream.rstrip("\n")
    m = _STEP.match(text.strip())
    if m:
        return BuildEvent("step", text.strip(), int(m.group(1)))
    return BuildEvent("output", text)


def failed_line(error: str, step: int, steps: list[Instruction]) -> int | None:
    """The Dockerfile line of a failed build: the one the engine names (parse errors say
    ``line N``), else the line of the ``step``-th instruction (the engine counts from 1)."""
    m = _ENGINE_LINE.search(error)
    if m:
        return int(m.group(1))
    if 1 <= step <= len(steps):
        return steps[step - 1].line
    return None


def missing_bases(api: docker.DockerClient, refs: Iterable[str]) -> list[str]:
    """Of ``refs``, those the engine does not have locally."""
    import docker.errors

    missing = []
    for ref in refs:
        try:
            api.images.get(ref)
        except docker.errors.ImageNotFound:
            missing.append(ref)
    return missing


def read_dockerfile(context: Path, dockerfile: str) -> tuple[Path, str]:
    """The Dockerfile (relative to ``context``, which it must stay inside) and its text."""
    if not context.is_dir():
        raise ConfigError(
            f"build context {context} is not a folder", where="image.context", hint="point it at the folder"
        )
    path = (context / dockerfile).resolve()
    if not path.is_relative_to(context.resolve()):
        raise ConfigError(
            f"Dockerfile {dockerfile} is outside the build context {context}",
            where="image.dockerfile",
            hint="keep the Dockerfile inside the context folder (the engine only sees that folder)",
        )
    try:
        if path.stat().st_size > MAX_DOCKERFILE:
            raise ConfigError(
                f"{path} is larger than 1 MiB", where="image.dockerfile", hint="is it a Dockerfile?"
            )
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"cannot read Dockerfile {path}: {err}", where="image.dockerfile", hint="check the path"
        ) from None
    return path, text


def build_image(
    api: docker.DockerClient,
    context: Path,
    tag: str,
    *,
    dockerfile: str = "Dockerfile",
    label: str,
    on_line: Callable[[str], None] = lambda _line: None,
) -> str:
    """Build ``tag`` from ``context``/``dockerfile``; the image id. Never pulls: a ``FROM`` image
    that is not local is a HostError before the build starts."""
    import docker.errors

    path, text = read_dockerfile(context, dockerfile)
    where = str(path)
    steps = instructions(text)
    if not any(s.keyword == "FROM" for s in steps):
        raise ConfigError(
            "the Dockerfile has no FROM", where=where, hint="start it with FROM clawpen-base:bookworm"
        )
    bases = from_images(steps, where)
    missing = missing_bases(api, [ref for _, ref in bases])
    if missing:
        first = next(s for s, ref in bases if ref == missing[0])
        hint = (
            BASE_HINT
            if missing[0] == BASE_TAG
            else (f"build or load {missing[0]} on this host (docker build, docker load): clawpen never pulls")
        )
        raise HostError(
            f"image {missing[0]} (FROM) is not on this host", where=f"{where}:{first.line}", hint=hint
        )
    step = 0
    image_id = None
    try:
        stream = api.api.build(
            path=str(context),
            dockerfile=str(path.relative_to(context.resolve())),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            labels={LABEL: label},
        )
        for message in stream:
            event = parse_event(message)
            if event is None:
                continue
            if event.kind == "error":
                line = failed_line(event.text, step, steps)
                instr = next((s for s in steps if s.line == line), None)
                shown = f" ({instr.keyword} {instr.args})" if instr else ""
                raise SandboxError(
                    f"building {tag} failed{shown}: {event.text}",
                    where=f"{where}:{line}" if line else where,
                    hint="fix that line of the Dockerfile; the lines above show the engine's output",
                )
            if event.kind == "image":
                image_id = event.text
                continue
            if event.kind == "step":
                step = event.step
            on_line(event.text)
    except docker.errors.APIError as err:
        said = str(err.explanation or err)
        line = failed_line(said, 0, steps)
        raise SandboxError(
            f"the engine refused to build {tag}: {said}",
            where=f"{where}:{line}" if line else where,
            hint="fix that line of the Dockerfile" if line else "check the build context and Dockerfile",
        ) from None
    if image_id is None:
        image_id = api.images.get(tag).id
    return str(image_id)


def clawpen_images(api: docker.DockerClient) -> list[dict[str, Any]]:
    """Images clawpen made (label ``clawpen.image``, or a ``clawpen-`` tag): tag, id, size, made."""
    rows = []
    for image in api.images.list():
        tags = [t for t in image.tags if t.startswith("clawpen-")]
        label = (image.labels or {}).get(LABEL)
        if not tags and label is None:
            continue
        attrs = image.attrs
        rows.append(
            {
                "tags": tags or list(image.tags) or ["<none>"],
                "id": image.short_id.removeprefix("sha256:"),
                "size": int(attrs.get("Size", 0)),
                "created": str(attrs.get("Created", "")),
                "for": label or "",
            }
        )
    return sorted(rows, key=lambda r: r["tags"][0])


@dataclass(frozen=True)
class BuildRequest:
    """A bot's ``image = { context, dockerfile }``: what to build and the tag it gets."""

    bot: str
    context: Path
    dockerfile: str
    tag: str


def build_tag(bot: str, context: Path, dockerfile: str) -> str:
    """``clawpen-<bot>:<hash>``: the container tier's rule (:func:`clawpen.spec.container.built_tag`)."""
    return built_tag(bot, str(context), dockerfile)


def bot_image(bot: str, spec_bot: Any, base_dir: Path) -> str | BuildRequest | None:
    """The adapter to the spec's ``image`` field of a container bot: an image name, what to
    build (a table with ``context`` and ``dockerfile``; relative to the spec's folder), or None
    when the bot has no image."""
    image = getattr(spec_bot, "image", None)
    if image is None or isinstance(image, str):
        return image
    context = Path(os.path.normpath(os.path.join(base_dir, os.path.expanduser(str(image.context)))))
    dockerfile = str(getattr(image, "dockerfile", None) or "Dockerfile")
    return BuildRequest(bot, context, dockerfile, build_tag(bot, context, dockerfile))
