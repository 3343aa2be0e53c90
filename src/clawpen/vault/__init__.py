"""Secrets for bots: encrypted at rest (:mod:`clawpen.vault.store`) and kept out of logs
(:mod:`clawpen.vault.redact`).

Secret values travel as ``bytes`` and never appear in an exception message, a ``repr`` or a log
line; only their names do.
"""
