"""clawpen: run automation bots in isolated, limited sandboxes with secure defaults.

The public surface is small: load a spec (:mod:`clawpen.spec`), turn it into a frozen plan
(:mod:`clawpen.plan`), and hand the plan to a tier (:mod:`clawpen.sandbox`).
"""

__version__ = "0.1.0"
