"""``network.egress = "learn"``: its values and the check of ``learn_for`` (pure)."""

from __future__ import annotations

from clawpen.spec.rules import RuleViolation

# Learn mode. ``network.egress = "learn"`` becomes ``"learn:<seconds>"`` in the bot's policy (the
# period, ``learn_for``) and ``"learn-until:<epoch>"`` on its gateway link (the end, counted from
# the bot's first start in learn mode: :mod:`clawpen.net.learn`).
LEARN = "learn"
LEARN_PREFIX = "learn:"
LEARN_UNTIL_PREFIX = "learn-until:"
LEARN_DEFAULT = 86400.0
LEARN_MIN, LEARN_MAX = 60.0, 30 * 86400.0
ALLOWED_BY_LEARN = "learn"  # the log's reason for a connection learn mode allowed


def learn_period(value: tuple[str, ...] | str) -> float | None:
    """The learn period (seconds) of a policy's egress value, or None if it is not learn mode."""
    if isinstance(value, str) and value.startswith(LEARN_PREFIX):
        try:
            return float(value[len(LEARN_PREFIX) :])
        except ValueError:
            return None
    return None


def learn_value(learn_for: float) -> str:
    """The policy's egress value of learn mode for ``learn_for`` seconds."""
    return f"{LEARN_PREFIX}{learn_for:g}"


def learn_until_value(until: float) -> str:
    """A link's egress value of learn mode ending at ``until`` (epoch seconds)."""
    return f"{LEARN_UNTIL_PREFIX}{until:.3f}"


def check_learn_for(egress: object, learn_for: float | None) -> None:
    """``learn_for`` belongs to ``egress = "learn"`` and lies between 1 minute and 30 days."""
    if learn_for is None:
        return
    if egress != LEARN:
        raise RuleViolation(
            'learn_for is set, but egress is not "learn"', 'set egress = "learn", or remove learn_for'
        )
    if not LEARN_MIN <= learn_for <= LEARN_MAX:
        raise RuleViolation(
            f"learn_for = {learn_for:g}s is out of range (1 minute to 30 days)", 'e.g. learn_for = "24h"'
        )


def describe(value: tuple[str, ...] | str) -> str:
    """A policy's or link's egress value for humans (``clawpen plan``): learn mode in words."""
    period = learn_period(value)
    if period is not None:
        span = (
            f"{period / 86400:g}d"
            if period >= 86400
            else f"{period / 3600:g}h"
            if period >= 3600
            else f"{period / 60:g}m"
        )
        return f'"learn" (open for {span} from the first start, logged; then nothing)'
    if isinstance(value, str) and value.startswith(LEARN_UNTIL_PREFIX):
        return f'"learn" (open until {value[len(LEARN_UNTIL_PREFIX) :]}, logged; then nothing)'
    return value if isinstance(value, str) else ", ".join(value)
