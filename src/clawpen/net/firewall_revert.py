"""The revert watcher that ``clawpen firewall apply`` leaves behind (a detached process).

``python -m clawpen.net.firewall_revert --after S --state DIR --token T --who NAME`` sleeps S
seconds, then restores the table saved before the apply unless ``clawpen firewall confirm`` has
cleared the pending confirmation with token T (confirm also sends this process SIGTERM). It
runs in the network namespace of the apply that started it, so it restores the same ruleset.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clawpen-firewall-revert")
    parser.add_argument("--after", type=float, required=True, metavar="S")
    parser.add_argument("--state", required=True, metavar="DIR")
    parser.add_argument("--token", required=True)
    parser.add_argument("--who", default="?")
    ns = parser.parse_args(argv)
    time.sleep(max(ns.after, 0.0))
    from clawpen.net.firewall import revert_if_pending

    try:
        reverted = revert_if_pending(Path(ns.state), ns.token, who=ns.who)
    except Exception as err:  # detached: the audit log already has the details
        print(f"clawpen firewall revert failed: {err}", file=sys.stderr)
        return 1
    return 0 if reverted else 3


if __name__ == "__main__":
    sys.exit(main())
