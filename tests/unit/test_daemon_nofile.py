"""The daemon raises its soft limit on open files (clawpen.daemon.app.raise_nofile)."""

from __future__ import annotations

import resource

from clawpen.daemon.app import raise_nofile


def test_a_low_soft_limit_is_raised_to_the_wanted_one_or_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        low = min(256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        want = 4096
        got = raise_nofile(want)
        expected = want if hard == resource.RLIM_INFINITY else min(want, hard)
        assert got == (max(low, expected), hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == max(low, expected)
        # a soft limit already above it is left alone (never lowered)
        assert raise_nofile(low - 1 if low > 1 else 1)[0] == max(low, expected)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
