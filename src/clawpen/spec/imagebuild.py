"""``image = { context = "./bot", dockerfile = "Dockerfile" }``: a container bot's image built by
clawpen from a Dockerfile (``clawpen image build BOT``; tagged ``clawpen-<bot>:<hash>``, see
:func:`clawpen.spec.container.built_tag`)."""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from clawpen.spec import bounds, rules

# A Docker image reference: [registry[:port]/]name[:tag][@digest], lowercase name components.
IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


class ImageBuild(BaseModel):
    """Build the bot's image from ``context`` (a folder, relative to the spec) and its
    ``dockerfile`` (relative to the context)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context: str = Field(description="the build context folder, relative to the spec file")
    dockerfile: str = Field("Dockerfile", description="the Dockerfile, relative to the context")

    @field_validator("context")
    @classmethod
    def _context(cls, v: str, info: ValidationInfo) -> str:
        ctx = info.context if isinstance(info.context, dict) else {}
        bounds.check_source(v, str(ctx.get("base_dir", os.getcwd())), "image.context")
        return v

    @field_validator("dockerfile")
    @classmethod
    def _dockerfile(cls, v: str) -> str:
        bounds.check_path_text(v, "image.dockerfile")
        if os.path.isabs(v) or ".." in v.split("/"):
            raise rules.RuleViolation(
                f"dockerfile {rules.shown(v)} lies outside the build context",
                'give a path inside the context, e.g. dockerfile = "Dockerfile"',
            )
        return v


def check_image_ref(v: str) -> str:
    """An image reference as Docker spells one (``name:tag``, ``registry/name@sha256:...``)."""
    if len(v) > 255 or not IMAGE_RE.match(v):
        raise rules.RuleViolation(
            f"image {rules.shown(v)} is not an image reference",
            'write it as Docker does, e.g. image = "python:3.11-slim" or "clawpen-base:bookworm"',
        )
    return v
