"""The ``clawpen`` command line: parse, call the library, render. Nothing else lives here.

Built on argparse rather than typer: ``clawpen run`` must start in a few milliseconds, and
importing typer (70 ms here) or pydantic (150 ms with the models) would cost more than the
whole sandbox set-up. Heavier modules (pydantic, rich) load only in the commands that need
them. Errors print ``error: what (where)`` and ``hint: ...`` and exit 2 for usage and config
errors, 1 for runtime failures, 125 when a sandbox cannot be built; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

from clawpen.errors import ClawpenError, UsageError

TYPE_CHECKING = False  # (no `typing` at run time: `clawpen --help` does without its 2 ms)
if TYPE_CHECKING:
    import argparse  # imported by main(), once entry() has set the collector's threshold
    from collections.abc import Sequence
    from typing import Any

    from clawpen.plan.model import Plan
    from clawpen.sandbox.tier import RunResult

__all__ = ["build_parser", "entry", "main"]

# The garbage collector while the CLI starts: it allocates many objects (modules, classes, the
# parser) and frees few, so the default first-generation threshold (700) runs some 20 collections
# (3-5 ms) in `clawpen run -- /bin/true` for almost nothing to collect. `entry` raises it; the
# daemon, which lives for months, goes back to the interpreter's defaults.
_GC_DEFAULTS = gc.get_threshold()
_GC_CLI = (20_000, 10, 10)
_GC_DEFAULT_COMMANDS = frozenset({"daemon"})


def _policy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sandbox policy (without -f)")
    g.add_argument("--name", default="run", help="bot name: picks its uid and hostname (default: run)")
    g.add_argument("--workspace", "-w", metavar="DIR", help="host folder mounted read-write at /workspace")
    g.add_argument("--memory", "-m", metavar="SIZE", help="memory limit, swap off (default 512M)")
    g.add_argument("--cpus", metavar="N", help="CPU share in cores (default 1)")
    g.add_argument("--pids", type=int, metavar="N", help="most processes and threads (default 256)")
    g.add_argument("--nofile", type=int, metavar="N", help="most open files (default 1024)")
    g.add_argument("--disk", metavar="SIZE", help="cap on workspace use and on any one file")
    g.add_argument("--tmp", metavar="SIZE", help="size of the private /tmp (default 64M)")
    g.add_argument(
        "--env", "-e", action="append", default=[], metavar="K=V", help="set an environment variable"
    )
    g.add_argument("--ro", action="append", default=[], metavar="PATH", help="extra host path, read-only")
    g.add_argument("--rw", action="append", default=[], metavar="PATH", help="extra host path, read-write")
    g.add_argument("--net", choices=["none"], default="none", help="network: none (loopback only)")
    g.add_argument(
        "--secret", action="append", default=[], metavar="NAME", help="vault secret at /run/secrets/NAME"
    )
    g.add_argument(
        "--secret-env", action="append", default=[], metavar="NAME", help="vault secret as env var too"
    )
    p.add_argument("-f", "--file", metavar="FILE", help="take the bot from a spec file (clawpen.toml)")
    p.add_argument(
        "--adopt-workspace",
        action="store_true",
        help="hand an existing workspace that holds files of other owners to the bot's uid (chown)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _seconds(raw: str) -> float:
    """``--timeout``: a finite duration above zero; argparse turns the error into a usage error."""
    from clawpen.spec.units import UnitError, parse_positive_duration

    try:
        return parse_positive_duration(raw)
    except UnitError as err:
        import argparse

        raise argparse.ArgumentTypeError(f"{err} ({err.hint})") from None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``clawpen`` (see :func:`clawpen.cli_parser.build_parser`)."""
    from clawpen import cli_parser

    return cli_parser.build_parser(command)


def _command_of(args: Sequence[str]) -> str | None:
    """The command word of ``args``: the first one that is not an option of ``clawpen`` itself."""
    for arg in args:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def add_commands(sub: Any) -> None:
    """This module's commands (``run``, ``plan``, ``schema``, ``doctor``); see clawpen.cli_parser."""
    import argparse

    run = sub.add_parser("run", help="run one command or bot in a sandbox, in the foreground")
    _policy_flags(run)
    run.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="kill the bot after S seconds, or a duration: 5m (exit 124)",
    )
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="-- CMD ARGS... | BOT")

    plan = sub.add_parser("plan", help="print what running a bot would do, without running it")
    _policy_flags(plan)
    plan.add_argument("--argv", action="store_true", help="also print the bubblewrap argv")
    plan.add_argument("args", nargs=argparse.REMAINDER, metavar="-- CMD ARGS... | BOT")

    sub.add_parser("schema", help="print the JSON Schema of clawpen.toml")
    doctor = sub.add_parser("doctor", help="check this host for what clawpen needs, with fixes")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument(
        "--file", "-f", default="clawpen.toml", help="the spec whose [cluster] to check (if it exists)"
    )


def _plan_from_args(ns: argparse.Namespace) -> Plan:
    from clawpen.paths import state_dir
    from clawpen.plan.build import HostFacts, build_plan
    from clawpen.sandbox.seccomp import default_policy
    from clawpen.sandbox.users import identity_for

    args = list(ns.args)
    if args[:1] == ["--"]:
        args = args[1:]
    if ns.file:
        policy, timeout = _policy_from_file(ns.file, args)
        ns.timeout = ns.timeout if getattr(ns, "timeout", None) is not None else timeout
    else:
        from clawpen.spec.policy import policy_from_flags

        policy = policy_from_flags(
            args,
            base_dir=os.getcwd(),
            name=ns.name,
            workspace=ns.workspace,
            memory=ns.memory,
            cpus=ns.cpus,
            pids=ns.pids,
            nofile=ns.nofile,
            disk=ns.disk,
            tmp=ns.tmp,
            env=ns.env,
            ro=ns.ro,
            rw=ns.rw,
            secrets=ns.secret,
            secret_env=ns.secret_env,
        )
    if ns.adopt_workspace:
        policy = policy._replace(workspace_adopt=True)
    ident = identity_for(policy.name, state_dir())
    return build_plan(policy, ident, HostFacts.probe(), default_policy())


def _policy_from_file(file: str, args: list[str]) -> tuple[Any, float | None]:
    from clawpen.spec.loader import load_spec

    loaded = load_spec(file)
    bots = loaded.spec.bots
    if len(args) > 1:
        raise UsageError(
            "with -f, give one bot name", where="clawpen run -f", hint="write: clawpen run -f FILE BOT"
        )
    if not args:
        if len(bots) != 1:
            raise UsageError(
                f"{file} has {len(bots)} bots; name the one to run",
                where="clawpen run -f",
                hint=f"write: clawpen run -f {file} BOT (bots: {', '.join(bots) or 'none'})",
            )
        args = list(bots)
    name = args[0]
    if name not in bots:
        raise UsageError(
            f"no bot named {name!r} in {file}",
            where=f"{file} bots",
            hint=f"known bots: {', '.join(bots) or 'none'}",
        )
    bot = bots[name]
    return bot.to_policy(name, str(loaded.base_dir)), bot.timeout


def cmd_run(ns: argparse.Namespace) -> int:
    from clawpen.paths import state_dir
    from clawpen.sandbox.namespace import NamespaceTier
    from clawpen.sandbox.tier import EXIT_NOT_FOUND

    plan = _plan_from_args(ns)
    missing = _missing_command(plan)
    if missing:
        _err(
            missing,
            where=f"command {plan.command[0]!r}",
            hint="check the name, or mount its folder with --ro",
        )
        return EXIT_NOT_FOUND
    secrets = _secret_values(plan)
    tier = NamespaceTier(state_dir())
    if plan.vm is not None:  # tier = "vm": QEMU in that same sandbox
        from clawpen.vm.tier import VmTier

        result = VmTier(state_dir(), tier).run(plan, timeout=ns.timeout, secrets=secrets)
    else:
        result = tier.run(plan, timeout=ns.timeout, secrets=secrets)
    _report(result, ns.json)
    return result.exit_code


def _secret_values(plan: Plan) -> dict[str, bytes]:
    names = [m.source for m in plan.mounts if m.kind == "secret" and m.source]
    if not names:
        return {}
    from clawpen.paths import state_dir
    from clawpen.vault.store import Vault

    return Vault(state_dir()).values_for(names)


def _missing_command(plan: Plan) -> str | None:
    from clawpen.sandbox.resolve import find_command

    return None if find_command(plan) is not False else f"{plan.command[0]}: command not found in the sandbox"


def _report(result: RunResult, as_json: bool) -> None:
    if as_json:
        import json

        from clawpen.plan.model import jsonable

        print(json.dumps(jsonable(result)), file=sys.stderr)
    elif result.reason in ("oom", "timeout", "disk", "setup-failed"):
        print(f"clawpen: {result.message} (exit {result.exit_code})", file=sys.stderr)


def cmd_plan(ns: argparse.Namespace) -> int:
    import json

    from clawpen.plan.build import describe_limits, describe_network

    plan = _plan_from_args(ns)
    data = plan.to_dict()
    if ns.argv:
        from clawpen.sandbox.bwrap import bwrap_argv

        data["bwrap_argv"] = bwrap_argv(plan, _placeholder_fds(plan))
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"bot       {plan.bot}  (uid {plan.identity.uid}, hostname {plan.hostname})")
    print(f"command   {' '.join(plan.command)}")
    print(f"limits    {describe_limits(plan)}")
    print(f"network   {describe_network(plan)}")
    print(f"namespaces {', '.join(plan.namespaces)}")
    print("mounts")
    for m in plan.mounts:
        what = m.source if m.kind in ("ro", "rw", "symlink") else (f"{m.size} bytes" if m.size else "")
        print(f"  {m.kind:<10} {m.dest:<24} {what or ''}")
    print(f"seccomp   {len(plan.seccomp.errno_syscalls)} syscalls denied on {', '.join(plan.seccomp.arches)}")
    if plan.container is not None:  # the bot itself runs under the engine's default seccomp profile
        print(f"image     {plan.container.image} (engine {plan.container.engine}; seccomp: the engine's)")
    if plan.vm is not None:
        from clawpen.spec.units import format_size

        vm = plan.vm
        ports = ", ".join(map(str, vm.ports)) or "none"
        print(
            f"vm        kernel {vm.kernel}, memory {format_size(vm.memory)}, cpus {vm.cpus}, "
            f"rootfs {vm.rootfs}, forwarded guest ports {ports}"
        )
    if ns.argv:
        print("bwrap     " + " ".join(data["bwrap_argv"]))
    return 0


def _placeholder_fds(plan: Plan) -> Any:
    from clawpen.sandbox.bwrap import BwrapFds

    numbers = iter(range(10, 1000))
    data = {m.dest: next(numbers) for m in plan.mounts if m.kind == "data"}
    pinned = {m.dest: next(numbers) for m in plan.mounts if m.pin}
    return BwrapFds(block=3, info=4, seccomp=5, data=data, pinned=pinned)


def cmd_schema(_ns: argparse.Namespace) -> int:
    import json

    from clawpen.spec.models import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_doctor(ns: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from clawpen.doctor import checks_ok, run_checks
    from clawpen.paths import state_dir

    checks = run_checks(state_dir=state_dir(), spec_file=Path(ns.file))
    if ns.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape

        console = Console(highlight=False)
        group = None
        for c in checks:
            if c.group != group:
                group = c.group
                console.print(f"[bold]{group}[/bold]")
            mark = "[red]✗[/red]" if not c.ok else ("[yellow]![/yellow]" if c.warn else "[green]✓[/green]")
            console.print(f"  {mark} {escape(c.name):<18} {escape(c.detail)}")
            if c.hint and (not c.ok or c.warn):
                console.print(f"      [dim]hint:[/dim] {escape(c.hint)}")
    return 0 if checks_ok(checks) else 1


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "schema": cmd_schema, "doctor": cmd_doctor}


def _err(what: str, *, where: str | None = None, hint: str | None = None) -> None:
    from clawpen.termsafe import for_stream  # a daemon's error can quote a bot's text

    safe = for_stream(sys.stderr)
    print(f"error: {safe(what)}" + (f" ({safe(where)})" if where else ""), file=sys.stderr)
    if hint:
        print(f"hint: {safe(hint)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args[: args.index("--")] if "--" in args else "--debug" in args
    try:
        parser = build_parser()  # each command's own parser is built once the parse reaches it
        ns, extra = parser.parse_known_args(args)
        if extra:
            prog = f"clawpen {ns.cmd}" if ns.cmd else "clawpen"
            raise UsageError(
                f"unrecognized arguments: {' '.join(extra)}", where=prog, hint=f"see `{prog} --help`"
            )
        if not ns.cmd:
            parser.print_help()
            return 2
        if ns.cmd in _GC_DEFAULT_COMMANDS:
            gc.set_threshold(*_GC_DEFAULTS)
        if ns.cmd in COMMANDS:
            return COMMANDS[ns.cmd](ns)
        from clawpen.cli_parser import command_module

        return int(command_module(ns.cmd).COMMANDS[ns.cmd](ns))
    except ClawpenError as err:
        if debug:
            raise
        _err(err.what, where=err.where, hint=err.hint)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """The console script: like ``sys.exit(main())`` but skips the interpreter's teardown (about
    14 ms of freeing objects), which ``clawpen run`` would otherwise add to every bot's start;
    and collects garbage less often while it starts (see _GC_CLI)."""
    gc.set_threshold(*_GC_CLI)
    try:
        code = main()
    except BrokenPipeError:  # `clawpen logs | head`: the reader left; say nothing more
        code = 141
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
