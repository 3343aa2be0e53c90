"""``clawpen image build|ls`` and ``clawpen export compose``: parse, call the engine, render.

These talk to the container engine directly (no daemon): building an image or writing a file
needs no supervisor. Build progress goes to stderr line by line; the engine's text (a RUN
step's output) is shown escaped on a terminal (:mod:`clawpen.termsafe`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from clawpen import termsafe
from clawpen.errors import UsageError


def add_commands(sub: Any) -> None:
    """Add ``image`` to the main parser's subcommands (``export compose`` lives on ``export``)."""
    image = sub.add_parser("image", help="build and list container images (no registry: built locally)")
    actions = image.add_subparsers(dest="image_cmd", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="build bots' images from their Dockerfiles (image = { context, dockerfile })"
    )
    build.add_argument("bots", nargs="*", metavar="BOT", help="bots to build (default: all with one)")
    build.add_argument("--base", action="store_true", help="build the base image clawpen-base:bookworm")
    build.add_argument(
        "-f", "--file", default="clawpen.toml", metavar="FILE", help="spec file (default clawpen.toml)"
    )
    build.add_argument("--context", metavar="DIR", help="without a spec: build this folder (needs --tag)")
    build.add_argument("--dockerfile", default="Dockerfile", metavar="FILE", help="with --context")
    build.add_argument("--tag", metavar="NAME:TAG", help="with --context: the image's tag")
    build.add_argument("--engine", choices=["auto", "docker", "podman"], default="auto")
    build.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    ls = actions.add_parser("ls", help="list the images clawpen built")
    ls.add_argument("--engine", choices=["auto", "docker", "podman"], default="auto")
    ls.add_argument("--json", action="store_true", help="machine-readable output")


def _client(engine: Literal["auto", "docker", "podman"]) -> Any:
    from clawpen.container.engine import client, detect

    return client(detect(engine))


def _progress(quiet: bool) -> Any:
    safe = termsafe.for_stream(sys.stderr)

    def show(line: str) -> None:
        if not quiet:
            print(safe(line), file=sys.stderr, flush=True)

    return show


def _requests(ns: argparse.Namespace) -> list[Any]:
    """What to build: ``--context`` alone, or the spec's bots with an image build."""
    from clawpen.container.image import BuildRequest

    if ns.context:
        if ns.bots:
            raise UsageError("give BOT names or --context, not both", where="clawpen image build")
        if not ns.tag:
            raise UsageError(
                "--context needs --tag", where="clawpen image build", hint="e.g. --tag clawpen-mybot:dev"
            )
        return [BuildRequest(ns.tag.partition(":")[0], Path(ns.context).resolve(), ns.dockerfile, ns.tag)]
    if ns.base and not ns.bots:
        return []
    from clawpen.spec.loader import load_spec

    loaded = load_spec(ns.file)
    return build_requests(loaded.spec.bots, loaded.base_dir, ns.bots, ns.file)


def build_requests(bots: dict[str, Any], base_dir: Path, names: list[str], file: str) -> list[Any]:
    """The builds of the spec's ``bots`` named in ``names`` (each must have an image table), or
    of every bot that has one (at least one must)."""
    from clawpen.container.image import BuildRequest, bot_image

    unknown = [b for b in names if b not in bots]
    if unknown:
        raise UsageError(
            f"no bot named {unknown[0]!r} in {file}",
            where=f"{file} bots",
            hint=f"known bots: {', '.join(bots) or 'none'}",
        )
    found = []
    for name in names or list(bots):
        image = bot_image(name, bots[name], base_dir)
        if isinstance(image, BuildRequest):
            found.append(image)
        elif names:
            raise UsageError(
                f"bot {name} has no image to build",
                where=f"{file} bots.{name}.image",
                hint='set image = { context = "./bot", dockerfile = "Dockerfile" } (with tier = "container")',
            )
    if not found:
        raise UsageError(
            f"no bot in {file} has an image to build",
            where=file,
            hint='give a container bot image = { context = "./bot" }, or use --base / --context',
        )
    return found


def cmd_image(ns: argparse.Namespace) -> int:
    if ns.image_cmd == "ls":
        return _ls(ns)
    from clawpen.container.base import build_base
    from clawpen.container.image import BASE_TAG, build_image

    if ns.tag and not ns.context:
        raise UsageError("--tag goes with --context", where="clawpen image build")
    todo = _requests(ns)  # spec errors before any building
    api = _client(ns.engine)
    show = _progress(ns.quiet)
    if ns.base:
        print(f"building {BASE_TAG} from Debian's packages", file=sys.stderr)
        image_id = build_base(api, BASE_TAG, on_line=show)
        print(f"built {BASE_TAG} ({image_id[:19]})")
    for req in todo:
        print(f"building {req.tag} from {req.context / req.dockerfile}", file=sys.stderr)
        image_id = build_image(
            api, req.context, req.tag, dockerfile=req.dockerfile, label=req.bot, on_line=show
        )
        print(f"built {req.tag} ({image_id[:19]})")
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}GB"


def _ls(ns: argparse.Namespace) -> int:
    from clawpen.container.image import clawpen_images

    rows = clawpen_images(_client(ns.engine))
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    safe = termsafe.for_stream(sys.stdout)
    print(f"{'IMAGE':<44} {'ID':<12} {'SIZE':>8}  {'FOR':<16} CREATED")
    for row in rows:
        for tag in row["tags"]:
            print(
                f"{safe(tag):<44} {row['id'][:12]:<12} {_size(row['size']):>8}  {safe(row['for']):<16} "
                f"{row['created'][:19]}"
            )
    return 0


def export_compose(ns: argparse.Namespace) -> int:
    """``clawpen export compose``: the spec's container bots as a Compose file."""
    from clawpen.container.compose import compose_text, from_spec
    from clawpen.paths import state_dir
    from clawpen.sandbox.users import identity_for
    from clawpen.spec.loader import load_spec

    loaded = load_spec(ns.file)
    state = state_dir()

    def identity(name: str) -> tuple[int, int]:
        ident = identity_for(name, state)
        return ident.uid, ident.gid

    bots = from_spec(loaded.spec, loaded.base_dir, identity)
    if not bots:
        raise UsageError(
            f"{ns.file} has no container bots to export",
            where=f"{ns.file} bots",
            hint='the export is for bots with tier = "container" (and an image)',
        )
    return write_export(ns.output, compose_text(bots), f" ({len(bots)} bot{'s' if len(bots) != 1 else ''})")


COMMANDS = {"image": cmd_image}


def write_export(output: str | None, text: str, note: str = "") -> int:
    """An export's text to ``-o OUTPUT`` (written atomically; its folder must exist) or stdout."""
    from clawpen.fsutil import write_atomic

    if output:
        out = Path(output)
        if not out.parent.is_dir():
            raise UsageError(
                f"folder {out.parent} does not exist", where="clawpen export -o", hint="create it first"
            )
        write_atomic(out, text.encode())
        print(f"wrote {out}{note}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
