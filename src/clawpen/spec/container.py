"""The container tier's part of a bot spec: which image, which engine, and the fields the tier
cannot honour (refused at plan time, never silently ignored).

Pure and pydantic-free (the planner and `clawpen run` import it); the ``image = { context,
dockerfile }`` table's model is :class:`clawpen.spec.imagebuild.ImageBuild`.
"""

from __future__ import annotations

import os
from typing import Any, Literal, NamedTuple

from clawpen.errors import PolicyError

EngineChoice = Literal["auto", "docker", "podman"]


class ContainerSettings(NamedTuple):
    """What the container tier needs beyond the plan: the image (a tag; for a built image, the
    tag clawpen gives it), the engine, and where a built image comes from."""

    image: str
    engine: EngineChoice = "auto"
    build_context: str | None = None  # absolute path of the build context (image = { context })
    dockerfile: str | None = None  # relative to the context

    @property
    def built(self) -> bool:
        """True when clawpen builds the image (``clawpen image build BOT``)."""
        return self.build_context is not None


def built_tag(bot: str, context: str, dockerfile: str) -> str:
    """``clawpen-<bot>:<hash>``: the tag of a bot's built image, from its context folder and
    Dockerfile path (the same spec gives the same tag; a moved context a new one)."""
    import hashlib  # here: `clawpen run` loads this module and must not pay for hashlib

    digest = hashlib.sha256(f"{context}\0{dockerfile}".encode()).hexdigest()[:12]
    return f"clawpen-{bot.lower()}:{digest}"


def check_image_field(tier: str, image: object) -> None:
    """``image`` is required with ``tier = "container"`` and refused with any other tier."""
    from clawpen.spec.rules import RuleViolation

    if tier == "container" and image is None:
        raise RuleViolation(
            'tier = "container" needs an image',
            'add image = "name:tag" (an image on this host), or image = { context = "./bot" } to '
            "build one from a Dockerfile",
        )
    if tier != "container" and image is not None:
        raise RuleViolation(
            f"image is set, but the bot runs in the {tier} tier (which uses the host's /usr)",
            'add tier = "container" to run the bot in that image, or remove image',
        )


def check_fields(bot: str, *, rw: bool, io_weight: bool = False) -> None:
    """Refuse the fields the container tier cannot honour (PolicyError with the field's path).

    ``build`` steps are honoured: they run on the host in the sandbox tier, and their output is a
    read-only bind at ``build.mount`` (it must run on the image's userland). ``start_cpus`` too:
    the CPU quota is on clawpen's cgroup around the container, which the allowance changes.
    """
    refused = {
        "filesystem.rw": (
            rw,
            "a container bot's only writable host folder is its workspace",
            "use the workspace (at /workspace), or mount the folder read-only (filesystem.ro)",
        ),
        "resources.io_weight": (
            io_weight,
            "io_weight in the container tier: not yet (the engine's blkio weight needs BFQ)",
            "remove io_weight, or run the bot in the sandbox tier",
        ),
    }
    for field, (present, what, hint) in refused.items():
        if present:
            raise PolicyError(what, where=f"bots.{bot}.{field}", hint=hint)


def settings(
    bot: str,
    image: str | tuple[str, str],
    engine: EngineChoice,
    base_dir: str,
) -> ContainerSettings:
    """The container settings of ``bot``: ``image`` is a tag, or (context, dockerfile) to build."""
    if isinstance(image, str):
        return ContainerSettings(image, engine)
    context = os.path.normpath(os.path.join(base_dir, os.path.expanduser(image[0])))
    return ContainerSettings(built_tag(bot, context, image[1]), engine, context, image[1])


def for_bot(bot: Any, name: str, base_dir: str) -> ContainerSettings:
    """A container bot's settings, once the fields the tier cannot honour are refused. ``bot``:
    a :class:`clawpen.spec.models.Bot` (not imported: that module imports this one)."""
    check_fields(name, rw=bool(bot.filesystem.rw), io_weight=bot.resources.io_weight is not None)
    if bot.image is None:  # the model refuses it; a policy is never built without one
        raise PolicyError(f"{name} has no image", where=f"bots.{name}.image", hint='add image = "name:tag"')
    image = bot.image if isinstance(bot.image, str) else (bot.image.context, bot.image.dockerfile)
    return settings(name, image, bot.engine, base_dir)
