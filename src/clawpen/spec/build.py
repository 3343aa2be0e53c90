"""A bot's ``build`` steps: commands run once per release, in the bot's sandbox."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class BuildSpec(BaseModel):
    """What a bot builds before it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
