"""One exception root for everything clawpen reports to a person.

    ClawpenError                 what / where / hint, exit code 1
    ├── UsageError               bad command-line use                      (exit 2)
    ├── ConfigError              a spec that does not load or validate     (exit 2)
    │   └── PolicyError          a spec that breaks a security rule        (exit 2)
    ├── HostError                the host lacks something a tier needs     (exit 1)
    ├── AccessError              a token or role does not allow the action  (exit 1)
    ├── SandboxError             a sandbox step failed; names the step     (exit 125)
    └── InternalError            a bug in clawpen, not the caller's input  (exit 1)

Every error carries ``what`` (one sentence), ``where`` (a file:line, a field path or a step name)
and ``hint`` (how to fix it). The CLI prints them as ``error: what (where)`` and ``hint: ...``
and never a traceback unless ``--debug`` is given.
"""

from __future__ import annotations


class ClawpenError(Exception):
    """Root of every error clawpen raises on purpose."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.hint:
            text += f"; hint: {self.hint}"
        return text


class UsageError(ClawpenError):
    """The command line asks for something that does not make sense."""

    exit_code = 2


class ConfigError(ClawpenError):
    """A spec file or value that does not load or validate."""

    exit_code = 2


class PolicyError(ConfigError):
    """A spec value that is well-formed but unsafe (for example a writable mount of /etc)."""


class HostError(ClawpenError):
    """The host lacks a feature or tool that the chosen tier needs."""


class AccessError(ClawpenError):
    """The caller's token is missing, unknown, expired, or its role does not allow the action."""


class SandboxError(ClawpenError):
    """A step of building or tearing down a sandbox failed; ``where`` names the step."""

    exit_code = 125


class NotReady(SandboxError):
    """The sandbox runs but its bot has not started yet (a VM's guest still booting): a health
    check's failure then does not count, and its start period begins once the bot runs."""


class InternalError(ClawpenError):
    """An operation failed on a bug (an exception nobody raised on purpose): the daemon logs its
    traceback and answers with this short error (exit 1, HTTP 500), never "bad request"."""
