"""Parsing of sizes, durations and CPU counts, shared by the spec models and the CLI flags.

Pure functions with no third-party imports: ``clawpen run`` parses its flags with these
without loading pydantic.
"""

from __future__ import annotations

import math
import re

from clawpen.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


MAX_SIZE = 1 << 50  # 1 PiB: far above any real limit, far below what overflows the kernel's u64
MAX_DURATION = 366 * 86400.0  # a year: longer is a typo, and timers stay exact
_SIZE_HINT = 'write a number with a unit: "512M", "2G", "64k" (at most 1P)'


class UnitError(ValueError):
    """A value with a bad unit; ``hint`` says what a good one looks like."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(number: float, value: object, what: str, hint: str) -> float:
    if not math.isfinite(number):
        raise UnitError(f"{what} {_shown(value)} is not a finite number", hint)
    return number


def parse_size(value: object) -> int:
    """Bytes (more than zero, at most 1 PiB) from ``512M``, ``1.5G``, ``64k``, ``2GiB`` or a whole
    number of bytes (binary units)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UnitError(f"{_shown(value)} is not a size", 'write a size such as "512M" or "2G"')
    if isinstance(value, float):
        _finite(value, value, "size", _SIZE_HINT)
        if not value.is_integer():
            raise UnitError(f"size {_shown(value)} is not a whole number of bytes", _SIZE_HINT)
    if isinstance(value, int | float):
        number = value
    else:
        match = _SIZE.match(value) if len(value) <= 64 else None
        if not match or (match.group(3) and not match.group(2) and match.group(3).lower() != "b"):
            raise UnitError(f"{_shown(value)} is not a size", _SIZE_HINT)
        unit = match.group(2).lower()
        if not unit and not float(match.group(1)).is_integer():
            raise UnitError(f"size {_shown(value)} is not a whole number of bytes", _SIZE_HINT)
        number = _finite(float(match.group(1)), value, "size", _SIZE_HINT) * _SIZE_FACTORS[unit]
    if number < 0:
        raise UnitError(f"size {_shown(value)} is negative", "sizes are more than zero bytes")
    if number > MAX_SIZE:
        raise UnitError(f"size {_shown(value)} is larger than 1 PiB", _SIZE_HINT)
    size = int(number)
    if size <= 0:
        raise UnitError(f"size {_shown(value)} is zero", 'give a size above zero, e.g. "64M"')
    return size


UNLIMITED = ("unlimited",)


def parse_disk(value: object) -> int | None:
    """A disk cap: a size, or ``"unlimited"`` (None: no cap)."""
    if isinstance(value, str) and value.strip().lower() in UNLIMITED:
        return None
    return parse_size(value)


def parse_duration(value: object) -> float:
    """Seconds (zero or more, at most a year) from ``30s``, ``5m``, ``1h30m``, ``250ms`` or a
    plain number of seconds."""
    hint = 'write "90s", "5m", "1h30m" or "250ms", at most a year'
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UnitError(f"{_shown(value)} is not a duration", 'write a duration such as "30s" or "5m"')
    if isinstance(value, int):
        seconds = float(min(value, 1 << 60)) if value >= 0 else -1.0
    elif isinstance(value, float):
        seconds = value
    else:
        text = value.strip().lower()
        parts = _DURATION.findall(text) if len(text) <= 64 else []
        if len(text) <= 64 and _NUMBER.fullmatch(text):
            seconds = float(text)
        elif parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _DURATION_FACTORS[u] for n, u in parts)
        else:
            raise UnitError(f"{_shown(value)} is not a duration", hint)
    _finite(seconds, value, "duration", hint)
    if seconds < 0:
        raise UnitError(f"duration {_shown(value)} is negative", "durations are zero or more seconds")
    if seconds > MAX_DURATION:
        raise UnitError(f"duration {_shown(value)} is longer than a year", hint)
    return seconds


def parse_positive_duration(value: object) -> float:
    """A duration above zero (a timeout, an interval: zero would mean "never" or "always")."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise UnitError(f"duration {_shown(value)} is zero", 'give a duration above zero, e.g. "30s"')
    return seconds


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)?\s*$", re.IGNORECASE)
_RATE_FACTORS = {"": 1, "k": 1000, "m": 1000_000, "g": 1000_000_000}


def parse_rate(value: object) -> int:
    """Bits per second from ``8mbit``, ``512kbit``, ``1gbit`` or a plain integer (tc's units:
    decimal, bits; ``bps`` is bytes per second as in tc)."""
    hint = 'write "8mbit", "512kbit" or "1gbit" (8kbit to 100gbit)'
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UnitError(f"{_shown(value)} is not a rate", 'write a rate such as "8mbit"')
    if isinstance(value, int | float):
        bits = _finite(float(value), value, "rate", hint) if isinstance(value, float) else value
    else:
        match = _RATE.match(value) if len(value) <= 64 else None
        if not match:
            raise UnitError(f"{_shown(value)} is not a rate", hint)
        factor = _RATE_FACTORS[match.group(2).lower()] * (8 if (match.group(3) or "").lower() == "bps" else 1)
        bits = _finite(float(match.group(1)), value, "rate", hint) * factor
    if not 8000 <= bits <= 100_000_000_000:
        raise UnitError(f"rate {_shown(value)} is out of range", "use 8kbit to 100gbit")
    return int(bits)


MAX_CPUS = 4096


def parse_cpus(value: object) -> float:
    """A CPU share such as ``0.5`` (half a core) or ``2``: above zero, finite, at most 4096 (the
    host's own count is checked when the bot is planned)."""
    hint = "write a number of cores such as 0.5 or 2"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | str)
        or (isinstance(value, str) and len(value) > 64)
    ):
        raise UnitError(f"{_shown(value)} is not a CPU count", hint)
    try:
        cpus = float(value)
    except (ValueError, OverflowError):
        raise UnitError(f"{_shown(value)} is not a CPU count", hint) from None
    if not 0.0 < cpus <= MAX_CPUS:  # also false for nan
        raise UnitError(
            f"cpus = {_shown(value)} is out of range", f"use a share of cores above 0 and at most {MAX_CPUS}"
        )
    if cpus < 0.01:
        raise UnitError(f"cpus = {_shown(value)} is below 0.01", "the kernel's smallest CPU share is 0.01")
    return cpus


def format_size(n: int) -> str:
    """The shortest exact binary-unit spelling of ``n`` bytes (``536870912`` -> ``512M``)."""
    for unit in ("P", "T", "G", "M", "k"):
        factor = _SIZE_FACTORS[unit.lower()]
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def as_config_error(err: UnitError, where: str) -> ConfigError:
    """Turn a unit error into the error a person sees, pointing at ``where``."""
    return ConfigError(str(err), where=where, hint=err.hint)
