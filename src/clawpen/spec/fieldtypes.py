"""The spec's value types: sizes, durations and CPUs, as text or numbers (pydantic annotations)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

from clawpen.spec import units

Size = Annotated[
    int,
    BeforeValidator(units.parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?\s*[kKmMgGtTpP]?(i?[bB])?$"},
                {"type": "integer", "minimum": 1, "maximum": units.MAX_SIZE},
            ],
            "description": 'bytes, or a size with a binary unit: "512M", "2G", "64k" (above 0, at most 1P)',
        }
    ),
]
DiskSize = Annotated[
    int | None,
    BeforeValidator(units.parse_disk),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+(\.\d+)?\s*[kKmMgGtTpP]?(i?[bB])?|unlimited)$"},
                {"type": "integer", "minimum": 1, "maximum": units.MAX_SIZE},
            ],
            "description": 'a size such as "10G", or "unlimited" (no cap: not advised)',
        }
    ),
]
Duration = Annotated[
    float,
    BeforeValidator(units.parse_duration),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "number", "minimum": 0, "maximum": units.MAX_DURATION}],
            "description": 'seconds, or a duration: "30s", "5m", "1h30m", "250ms" (at most a year)',
        }
    ),
]
PositiveDuration = Annotated[
    float,
    BeforeValidator(units.parse_positive_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "number", "exclusiveMinimum": 0, "maximum": units.MAX_DURATION},
            ],
            "description": 'seconds above zero, or a duration: "30s", "5m", "1h30m" (at most a year)',
        }
    ),
]
Cpus = Annotated[float, BeforeValidator(units.parse_cpus)]
