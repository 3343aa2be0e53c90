"""Parsing of sizes, durations and CPU counts, shared by the spec models and the CLI flags.

Pure functions with no third-party imports: ``clawpen run`` parses its flags with these
without loading pydantic.
"""

from __future__ import annotations

import re

from clawpen.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class UnitError(ValueError):
    """A value with a bad unit; ``hint`` says what a good one looks like."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def parse_size(value: str | int) -> int:
    """Bytes from ``512M``, ``1.5G``, ``64k``, ``2GiB`` or a plain integer (binary units)."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a size", 'write a size such as "512M" or "2G"')
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"size {value} is negative", "sizes are zero or more bytes")
        return value
    match = _SIZE.match(value)
    if not match or (match.group(3) and not match.group(2) and match.group(3).lower() != "b"):
        raise UnitError(f"{value!r} is not a size", 'write a number with a unit: "512M", "2G", "64k"')
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * _SIZE_FACTORS[unit])


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``30s``, ``5m``, ``1h30m``, ``250ms`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a duration", 'write a duration such as "30s" or "5m"')
    if isinstance(value, int | float):
        if value < 0:
            raise UnitError(f"duration {value} is negative", "durations are zero or more seconds")
        return float(value)
    text = value.strip().lower()
    try:
        return parse_duration(float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UnitError(f"{value!r} is not a duration", 'write "90s", "5m", "1h30m" or "250ms"')
    return sum(float(n) * _DURATION_FACTORS[u] for n, u in parts)


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)?\s*$", re.IGNORECASE)
_RATE_FACTORS = {"": 1, "k": 1000, "m": 1000_000, "g": 1000_000_000}


def parse_rate(value: str | int) -> int:
    """Bits per second from ``8mbit``, ``512kbit``, ``1gbit`` or a plain integer (tc's units:
    decimal, bits; ``bps`` is bytes per second as in tc)."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a rate", 'write a rate such as "8mbit"')
    if isinstance(value, int):
        bits = value
    else:
        match = _RATE.match(value)
        if not match:
            raise UnitError(f"{value!r} is not a rate", 'write "8mbit", "512kbit" or "1gbit"')
        factor = _RATE_FACTORS[match.group(2).lower()] * (8 if (match.group(3) or "").lower() == "bps" else 1)
        bits = int(float(match.group(1)) * factor)
    if not 8000 <= bits <= 100_000_000_000:
        raise UnitError(f"rate {value!r} is out of range", "use 8kbit to 100gbit")
    return bits


def parse_cpus(value: str | float | int) -> float:
    """A CPU share such as ``0.5`` (half a core) or ``2``; must be above zero."""
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise UnitError(f"{value!r} is not a CPU count", "write a number of cores such as 0.5 or 2") from None
    if not cpus > 0.0 or cpus > 4096:
        raise UnitError(f"cpus = {value!r} is out of range", "use a share of cores above 0, e.g. 0.5 or 2")
    return cpus


def format_size(n: int) -> str:
    """The shortest exact binary-unit spelling of ``n`` bytes (``536870912`` -> ``512M``)."""
    for unit in ("T", "G", "M", "k"):
        factor = _SIZE_FACTORS[unit.lower()]
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def as_config_error(err: UnitError, where: str) -> ConfigError:
    """Turn a unit error into the error a person sees, pointing at ``where``."""
    return ConfigError(str(err), where=where, hint=err.hint)
