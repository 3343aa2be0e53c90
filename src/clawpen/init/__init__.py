"""``clawpen init``: write a ready ``clawpen.toml`` and bot folder from a built-in template.

Templates are package data under ``clawpen/init/templates/<name>/``; each holds a
``clawpen.toml`` and one bot folder. Writing is all or nothing: every file goes to a staging
folder next to the target first, and only then are they moved into place (an existing file is
an error unless ``force``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from clawpen.errors import UsageError

TEMPLATES = {
    "openclaw": "the OpenClaw AI gateway: Node 24 + openclaw built in the sandbox, on 127.0.0.1:18789",
    "python": "a Python bot with a virtual environment built from requirements.txt, health on /healthz",
    "node": "a Node.js bot, health on /healthz",
    "shell": "a shell-script bot with a heartbeat health check",
}
EXECUTABLE = (".sh",)


def template_root(name: str) -> Traversable:
    if name not in TEMPLATES:
        raise UsageError(
            f"no template named {name!r}",
            where="clawpen init --template",
            hint=f"choose one of: {', '.join(TEMPLATES)}",
        )
    return resources.files("clawpen.init").joinpath("templates", name)


def template_files(name: str) -> dict[str, bytes]:
    """Relative path -> content of every file of template ``name``."""
    out: dict[str, bytes] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                if child.name != "__pycache__":
                    walk(child, rel + "/")
            else:
                out[rel] = child.read_bytes()

    walk(template_root(name), "")
    return out


def write_template(name: str, target: Path, *, force: bool = False) -> list[Path]:
    """Write template ``name`` into ``target``; returns the written paths (sorted)."""
    files = template_files(name)
    target = target.resolve()
    if target.exists() and not target.is_dir():
        raise UsageError(
            f"{target} is not a folder", where="clawpen init", hint="give a folder to write into"
        )
    clashes = [rel for rel in files if (target / rel).exists()]
    if clashes and not force:
        raise UsageError(
            f"{target / clashes[0]} already exists"
            + (f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""),
            where="clawpen init",
            hint="pick an empty folder, or pass --force to overwrite the template's files",
        )
    target.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".clawpen-init-", dir=target))
    written: list[Path] = []
    try:
        for rel, data in files.items():
            path = stage / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o755 if rel.endswith(EXECUTABLE) else 0o644)
        for rel in files:
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, dest)
            written.append(dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return sorted(written)


def ask_template() -> str:
    """Ask on the terminal which template to use (stdin must be a TTY)."""
    names = list(TEMPLATES)
    print("Which bot do you want to run?")
    for i, name in enumerate(names, 1):
        print(f"  {i}) {name:<9} {TEMPLATES[name]}")
    while True:
        try:
            answer = input(f"template [1-{len(names)}, default 1]: ").strip()
        except EOFError:
            raise UsageError(
                "no template chosen", where="clawpen init", hint="pass --template NAME"
            ) from None
        if not answer:
            return names[0]
        if answer.isdigit() and 1 <= int(answer) <= len(names):
            return names[int(answer) - 1]
        if answer in TEMPLATES:
            return answer
        print(f"please answer 1-{len(names)} or a name ({', '.join(names)})")
