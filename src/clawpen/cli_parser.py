"""The ``clawpen`` parser, built lazily: only the chosen command's part is imported and built.

``clawpen run -- /bin/true`` must start in a few milliseconds, so the top-level parser knows each
command only by name and one-line help (:data:`COMMANDS`, in the order ``clawpen --help`` lists
them): enough for the help, the usage and the "invalid choice" error, which list every command.
When the parse reaches the command word, :class:`LazyCommands` imports that command's module and
calls its ``add_commands(sub)`` with a ``sub`` that builds that one command and skips the others,
so no module has to change shape. A test checks the table against what the modules build.

No ``typing`` at run time, no ``shutil`` (argparse imports it, with bz2 and lzma, for the width
of the help): :func:`help_width` is ``shutil.get_terminal_size`` without them.
"""

from __future__ import annotations

import argparse
import os
import sys

from clawpen.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

# Every command: the module that builds and runs it (its ``add_commands(sub)`` and ``COMMANDS``),
# and the line ``clawpen --help`` shows for it. The order is the help's.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("clawpen.cli", "run one command or bot in a sandbox, in the foreground"),
    "plan": ("clawpen.cli", "print what running a bot would do, without running it"),
    "schema": ("clawpen.cli", "print the JSON Schema of clawpen.toml"),
    "doctor": ("clawpen.cli", "check this host for what clawpen needs, with fixes"),
    "daemon": ("clawpen.cli_daemon", "run the supervisor daemon in the foreground (or: daemon install)"),
    "up": (
        "clawpen.cli_daemon",
        "apply clawpen.toml: start new bots, restart changed ones, stop removed ones",
    ),
    "down": ("clawpen.cli_daemon", "stop and forget bots (all when none is named)"),
    "start": ("clawpen.cli_daemon", "start bots"),
    "stop": ("clawpen.cli_daemon", "stop bots (SIGTERM, then SIGKILL after the grace period)"),
    "restart": ("clawpen.cli_daemon", "restart bots"),
    "ps": ("clawpen.cli_daemon", "list bots with state, pid, uptime and restarts"),
    "status": ("clawpen.cli_daemon", "one bot in detail, with its recent events"),
    "events": ("clawpen.cli_daemon", "state changes and daemon events"),
    "releases": ("clawpen.cli_daemon", "every applied `clawpen up`"),
    "token": ("clawpen.cli_daemon", "API tokens with a role: viewer, operator, admin"),
    "exec": ("clawpen.cli_daemon", "run a command inside a running bot's sandbox, as the bot"),
    "logs": ("clawpen.cli_daemon", "a bot's captured stdout and stderr"),
    "secrets": ("clawpen.cli_secrets", "store, list and remove encrypted secrets for bots"),
    "audit-log": ("clawpen.cli_secrets", "the audit log of operator and admin actions"),
    "firewall": ("clawpen.cli_firewall", "the host firewall from [host.firewall] (nftables, needs root)"),
    "host": ("clawpen.cli_host", "the host itself: hardening (the deployment practice)"),
    "metrics": ("clawpen.cli_metrics", "a bot's or the host's metrics over a time range"),
    "alerts": ("clawpen.cli_metrics", "firing and pending alerts; ack, silence, test notifications"),
    "export": ("clawpen.cli_metrics", "write the alert rules for Prometheus, or a Compose file"),
    "top": (
        "clawpen.cli_metrics",
        "live view of the host and every bot (keys: c m n r i sort, q quits)",
    ),
    "net": ("clawpen.cli_net", "the egress gateway: connection log, allowlist suggestion"),
    "init": ("clawpen.cli_bots", "write a ready clawpen.toml and bot folder from a template"),
    "validate": ("clawpen.cli_bots", "check a deployed bot, or attack its sandbox policy (--hostile)"),
    "release": ("clawpen.cli_releases", "one release in detail: `clawpen release show N`"),
    "diff": ("clawpen.cli_releases", "what changed between two releases: spec text and per bot"),
    "rollback": (
        "clawpen.cli_releases",
        "re-apply an earlier release's spec (default: the one before the latest) as a new release",
    ),
    "snapshot": ("clawpen.cli_snapshot", "snapshot, list, restore and forget a bot's workspace (restic)"),
    "storage": ("clawpen.cli_storage", "snapshot and log storage tiers (hot, warm, cold)"),
    "image": ("clawpen.cli_image", "build and list container images (no registry: built locally)"),
    "cluster": ("clawpen.cli_cluster", "the failover cluster: hosts, and who runs each HA bot"),
    "failover": (
        "clawpen.cli_cluster",
        "hand an HA bot over to its backup (stop, ship the workspace, start there)",
    ),
    "audit": (
        "clawpen.cli_audit",
        "audit the host, the spec, dependencies, logins and changes, with fixes",
    ),
    "report": (
        "clawpen.cli_report",
        "the deployment's documents: topology, manual, emergency plan, change log",
    ),
    "dashboard": ("clawpen.api.cli", "print the URL of the web dashboard (and make a token)"),
}


# The modules with more commands than this one's, and which of them has each command (a test
# checks them against each module's COMMANDS).
COMMAND_MODULES = tuple(dict.fromkeys(m for m, _ in COMMANDS.values() if m != "clawpen.cli"))
COMMAND_INDEX = {name: m for name, (m, _) in COMMANDS.items() if m != "clawpen.cli"}


def help_width() -> int:
    """The width argparse gives its help (``shutil.get_terminal_size().columns - 2``): $COLUMNS,
    else the terminal of stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns - 2


class Parser(argparse.ArgumentParser):
    """Usage errors are :class:`UsageError` (exit 2, with a hint); help without ``shutil``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, where=self.prog, hint=f"see `{self.prog} --help`")

    def _get_formatter(self) -> argparse.HelpFormatter:
        return self.formatter_class(prog=self.prog, width=help_width())  # type: ignore[call-arg]


class _Skipped:
    """The parser of a command that was not chosen: every call is accepted and builds nothing."""

    def __getattr__(self, _name: str) -> Any:
        return self._ignore

    def _ignore(self, *_args: Any, **_kwargs: Any) -> _Skipped:
        return self


_SKIPPED = _Skipped()


class _Only:
    """The ``sub`` a module's ``add_commands`` gets: builds the parser of ``name``, skips the rest."""

    def __init__(self, commands: LazyCommands, name: str) -> None:
        self.commands = commands
        self.name = name

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if kwargs.get("aliases"):  # the top-level parser knows a command by the table's name only
            raise TypeError(f"command {name!r}: no aliases; give each name its own line in COMMANDS")
        if name != self.name:
            return _SKIPPED
        kwargs.pop("help", None)  # the help line comes from COMMANDS
        kwargs.setdefault("prog", f"{self.commands._prog_prefix} {name}")
        parser = self.commands._parser_class(**kwargs)
        self.commands._name_parser_map[name] = parser  # in place: the order of the choices stays
        return parser


class LazyCommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """``clawpen``'s commands: a name and a help line each, a parser once the command is chosen."""

    def add_command(self, name: str, help: str) -> None:
        self._name_parser_map[name] = None
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help))

    def build(self, name: str) -> argparse.ArgumentParser:
        """The parser of command ``name`` (imported and built on first use)."""
        parser: argparse.ArgumentParser | None = self._name_parser_map[name]
        if parser is None:
            import importlib

            importlib.import_module(COMMANDS[name][0]).add_commands(_Only(self, name))
            parser = self._name_parser_map[name]
            if parser is None:
                raise RuntimeError(f"{COMMANDS[name][0]}.add_commands built no parser for {name!r}")
        return parser

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if values and values[0] in COMMANDS:
            self.build(str(values[0]))
        super().__call__(parser, namespace, values, option_string)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``clawpen``: every command by name; ``command``'s own parser built now (the
    others are built when the parse reaches them)."""
    from clawpen import __version__

    parser = Parser(prog="clawpen", description="Run automation bots in isolated, limited sandboxes.")
    parser.add_argument("--version", action="version", version=f"clawpen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser, action=LazyCommands)
    assert isinstance(sub, LazyCommands)
    for name, (_module, text) in COMMANDS.items():
        sub.add_command(name, text)
    if command in COMMANDS:
        sub.build(command)
    return parser


def command_module(name: str) -> Any:
    """The (already built) module of command ``name``."""
    return sys.modules[COMMANDS[name][0]]
