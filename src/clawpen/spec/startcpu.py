"""The start-up CPU allowance (``resources.start_cpus``, ``resources.start_for``).

From each start of a bot (restarts too) its CPU quota is ``start_cpus`` until its first passing
health check, then ``cpus`` (like Kubernetes' startup CPU boost). Without a health check the
allowance lasts ``start_for`` (default 60 s); with one, it ends at the first pass or after
``start_for`` at the latest (default: the most, 10 minutes), so a bot that never turns healthy
does not keep it. ``start_cpus`` is an allowance, not a reservation: it is capped at the host's
cores without a word, and ``up``'s pre-check keeps judging ``cpus``.
"""

from __future__ import annotations

from typing import NamedTuple

from clawpen.spec.rules import RuleViolation

START_FOR_DEFAULT = 60.0  # seconds, without a health check
START_FOR_MAX = 600.0  # "10m"; also the default with a health check


def check_allowance(cpus: float | None, start_cpus: float | None, start_for: float | None) -> None:
    """Refuse an allowance that is none (not above ``cpus``), or a ``start_for`` alone or too long."""
    if start_cpus is None:
        if start_for is not None:
            raise RuleViolation(
                "start_for is set without start_cpus",
                "set start_cpus (the CPU share while the bot starts, above cpus) or remove start_for",
            )
        return
    if cpus is not None and start_cpus <= cpus:
        raise RuleViolation(
            f"start_cpus = {start_cpus:g} is not above cpus = {cpus:g}",
            f"give start_cpus more than {cpus:g} (e.g. {max(2.0, cpus * 2):g}), or remove it",
        )
    if start_for is not None and start_for > START_FOR_MAX:
        raise RuleViolation(
            f"start_for = {start_for:g}s is longer than {START_FOR_MAX:g}s (10m)",
            'use at most "10m": the allowance is for starting, not for running',
        )


class Allowance(NamedTuple):
    """One run's allowance: the CPU share while it lasts and its longest duration (seconds)."""

    cpus: float  # already capped at the host's cores
    steady: float  # the bot's ``cpus`` afterwards
    seconds: float
    until_healthy: bool  # it also ends at the first passing health check


def allowance(
    cpus: float | None,
    start_cpus: float | None,
    start_for: float | None,
    *,
    host_cores: int,
    has_health: bool,
) -> Allowance | None:
    """The allowance for a bot's run, or None (unset, no ``cpus`` limit, or nothing above ``cpus``
    left once capped at ``host_cores``)."""
    if start_cpus is None or cpus is None:
        return None
    boost = min(start_cpus, float(max(1, host_cores)))
    if boost <= cpus:
        return None
    default = START_FOR_MAX if has_health else START_FOR_DEFAULT
    return Allowance(boost, cpus, default if start_for is None else start_for, has_health)
