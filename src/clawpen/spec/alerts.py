"""``[[alerts]]``, ``[[log_alerts]]``, ``[notify]`` and ``[metrics]``: monitoring policy."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class MonitoringConfig(BaseModel):
    """Collection interval, alert rules and where notifications go."""

    model_config = ConfigDict(extra="forbid", frozen=True)
