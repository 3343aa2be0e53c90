"""The daemon's commands on the command line (``up``, ``ps``, ``logs`` ...): parse, call, render.

Each command is a thin call to the daemon through :class:`clawpen.daemon.client.Client`;
``logs`` reads the log files directly, so it works while the daemon is down.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from clawpen import termsafe
from clawpen.errors import UsageError
from clawpen.paths import state_dir

RAW_HELP = "the exact text even on a terminal (there, control characters are escaped by default)"


def apply_flags(cmd: argparse.ArgumentParser, *, empty: str) -> None:
    """The options of a command that applies a spec (``up``, ``rollback``)."""
    cmd.add_argument(
        "--dry-run", action="store_true", help="check the spec against the host, show what would change"
    )
    cmd.add_argument("--json", action="store_true", help="machine-readable output")
    cmd.add_argument(
        "-d", "--detach", action="store_true", help="return once applied; do not wait for the bots to run"
    )
    cmd.add_argument(
        "--wait-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for each changed bot to run, or to pass its health check (default 60; "
        "longer for a health check's start_period); exit 1 naming each bot that did not come up",
    )
    cmd.add_argument("--allow-empty", action="store_true", help=empty)
    cmd.add_argument(
        "--no-snapshot",
        action="store_true",
        help="skip the [snapshots] before_up snapshot of the changed bots' workspaces",
    )


def add_commands(sub: Any) -> None:
    daemon = sub.add_parser("daemon", help="run the supervisor daemon in the foreground (or: daemon install)")
    daemon.add_argument("action", nargs="?", choices=["run", "install"], default="run")
    daemon.add_argument("--dry-run", action="store_true", help="install: print the unit, write nothing")
    daemon.add_argument("--unit-dir", metavar="DIR", help="install: where to write clawpen.service")
    daemon.add_argument(
        "--no-network",
        action="store_true",
        help="install: a unit without the host's network (bots with no egress and no published ports)",
    )
    daemon.add_argument(
        "--listen", metavar="HOST:PORT", help="API and dashboard address (default 127.0.0.1:8080; off: none)"
    )
    daemon.add_argument("--tls-cert", metavar="FILE", help="serve the API over TLS with this PEM certificate")
    daemon.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    daemon.add_argument(
        "--insecure-bind", action="store_true", help="allow a non-loopback --listen without TLS"
    )
    up = sub.add_parser(
        "up", help="apply clawpen.toml: start new bots, restart changed ones, stop removed ones"
    )
    up.add_argument(
        "-f", "--file", default="clawpen.toml", metavar="FILE", help="spec file (default clawpen.toml)"
    )
    apply_flags(up, empty="apply a spec with no bots (removes every bot)")
    up.add_argument("bots", nargs="*", metavar="BOT", help="only these bots (nothing is removed then)")
    for name, text in (
        ("down", "stop and forget bots (all when none is named)"),
        ("start", "start bots"),
        ("stop", "stop bots (SIGTERM, then SIGKILL after the grace period)"),
        ("restart", "restart bots"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.add_argument("bots", nargs="*", metavar="BOT")
    ps = sub.add_parser("ps", help="list bots with state, pid, uptime and restarts")
    ps.add_argument("--json", action="store_true", help="machine-readable output")
    status = sub.add_parser("status", help="one bot in detail, with its recent events")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("bots", nargs=1, metavar="BOT")
    events = sub.add_parser("events", help="state changes and daemon events")
    events.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--raw", action="store_true", help=RAW_HELP)
    events.add_argument("bot", nargs="?", metavar="BOT")
    releases = sub.add_parser("releases", help="every applied `clawpen up`")
    releases.add_argument("--json", action="store_true", help="machine-readable output")
    tok = sub.add_parser("token", help="API tokens with a role: viewer, operator, admin")
    tok_sub = tok.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    create = tok_sub.add_parser("create", help="make a token (shown once)")
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    create.add_argument("--name", default="", help="what the token is for")
    create.add_argument("--expires", metavar="DURATION", help='e.g. "30d"; default: never')
    create.add_argument("--json", action="store_true", help="machine-readable output")
    tok_ls = tok_sub.add_parser("ls", help="list tokens (ids and roles, never the secrets)")
    tok_ls.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = tok_sub.add_parser("revoke", help="revoke a token")
    revoke.add_argument("id", metavar="ID")
    ex = sub.add_parser("exec", help="run a command inside a running bot's sandbox, as the bot")
    ex.add_argument("--replica", type=int, default=0, help="which replica (default 0)")
    ex.add_argument("bot", metavar="BOT")
    ex.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    logs = sub.add_parser("logs", help="a bot's captured stdout and stderr")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--since", metavar="WHEN", help='e.g. "1h", "30m", "2026-11-24T10:00:00Z"')
    logs.add_argument("--until", metavar="WHEN", help="same forms as --since")
    logs.add_argument("--grep", metavar="RE", help="only lines matching this regular expression")
    logs.add_argument("--tail", "-n", type=int, metavar="N", help="only the last N lines")
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    logs.add_argument("--raw", action="store_true", help=RAW_HELP)
    logs.add_argument("bot", metavar="BOT", help="a bot; or `ship status`: the log targets' shipping and lag")
    logs.add_argument("action", nargs="*", help=argparse.SUPPRESS)


def _client() -> Any:
    from clawpen.daemon.client import Client

    return Client(state_dir())


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    secs = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def cmd_daemon(ns: argparse.Namespace) -> int:
    if ns.action == "install":
        return _install_unit(ns)
    from clawpen.api.config import apply_daemon_flags
    from clawpen.daemon.app import run_daemon

    apply_daemon_flags(ns.listen, ns.tls_cert, ns.tls_key, ns.insecure_bind)  # UsageError before anything
    import io
    import sys

    for stream in (sys.stdout, sys.stderr):  # daemon.log keeps every line, even after a SIGKILL
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    return run_daemon(state_dir())


def _install_unit(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from clawpen.daemon import systemd

    exe = os.path.join(os.path.dirname(sys.executable), "clawpen")
    text = systemd.render_unit(exe, state_dir(), python=None, host_network=not ns.no_network)
    if ns.dry_run:
        print(text, end="")
        return 0
    path = systemd.install_unit(text, Path(ns.unit_dir or systemd.UNIT_DIR), reload=True)
    print(systemd.next_steps(path, reloaded=systemd.systemd_running()))
    return 0


def cmd_up(ns: argparse.Namespace) -> int:
    """Exit 0 when applied and every changed bot came up; 1 when one did not (each is named,
    with why); 2 for a spec or a host check that fails (then nothing was applied)."""
    path = os.path.abspath(ns.file)
    if not os.path.exists(path):
        raise UsageError(
            f"spec file {ns.file} does not exist",
            where="clawpen up -f",
            hint="run `clawpen init`, or pass -f FILE",
        )
    from clawpen.audit import caller
    from clawpen.cli_progress import UpProgress

    result = _client().call_with_progress(
        "up",
        UpProgress(sys.stderr),
        file=path,
        bots=ns.bots,
        dry_run=ns.dry_run,
        who=caller(),
        progress=not ns.json,
        wait=not ns.detach,
        wait_timeout=ns.wait_timeout,
        allow_empty=ns.allow_empty,
        **({"no_snapshot": True} if ns.no_snapshot else {}),  # an older daemon knows no such field
    )
    return render_up(result, json_out=ns.json, dry_run=ns.dry_run)


def show_progress(item: Any) -> None:
    """`up`'s (and `rollback`'s) build output and wait, as it happens, on stderr (plain lines)."""
    from clawpen.cli_progress import UpProgress

    UpProgress(sys.stderr, live=False)(item)


def render_up(result: dict[str, Any], *, json_out: bool, dry_run: bool) -> int:
    """Print what `up` (or `rollback`) did or would do; 0, or 1 when a changed bot did not come up."""
    waited = result.get("wait") or {"ok": True, "bots": []}
    code = 0 if waited.get("ok", True) else 1
    if json_out:
        print(json.dumps(result, indent=2))
        return code
    head = "would" if dry_run else f"release {result.get('release')}:"
    if dry_run and "changes" in result:
        _print_plan(result["changes"])
    else:
        for key, verb in (
            ("create", "start"),
            ("recreate", "restart (changed)"),
            ("start", "start"),
            ("remove", "stop and remove"),
        ):
            for name in result.get(key, []):
                print(f"{head} {verb} {name}")
    if not any(result.get(k) for k in ("create", "recreate", "start", "remove")):
        print(f"{'nothing would change' if dry_run else 'nothing changed'}: every bot is up to date")
    failed = [r for r in waited.get("bots", []) if not r.get("ok")]
    for r in failed:
        _err_not_up(r)
    if failed:
        names = ", ".join(str(r["bot"]) for r in failed)
        print(f"hint: see `clawpen status BOT` and `clawpen logs BOT` ({names})", file=sys.stderr)
    _render_auto_rollback(result.get("auto_rollback"))
    return code


def _render_auto_rollback(auto: dict[str, Any] | None) -> None:
    """`up` with ``[deploy] auto_rollback`` whose changed bots did not come up: what the daemon did."""
    if not auto:
        return
    if auto.get("done"):
        print(
            f"error: rolled back: release {auto.get('new_release')} goes back to release "
            f"{auto.get('rollback_of')} ({', '.join(auto.get('failed') or [])} not up)",
            file=sys.stderr,
        )
        for r in (auto.get("wait") or {}).get("bots", []):
            if not r.get("ok"):
                _err_not_up(r)
        for warning in auto.get("warnings") or []:  # content that differs from the release's
            print(f"warning: {termsafe.clean_for(sys.stderr, str(warning))}", file=sys.stderr)
    else:
        print(f"error: not rolled back: {auto.get('why')}", file=sys.stderr)


def _print_plan(changes: list[dict[str, Any]]) -> None:
    """`up --dry-run`: the release plan, every bot with its replicas and why."""
    verbs = {"create": "start", "recreate": "restart", "start": "start", "remove": "stop and remove"}
    safe = termsafe.for_stream(sys.stdout)  # field names in a `why` come from the spec (env keys)
    for c in changes:
        reps = c["replicas"]
        on = f" (replicas {', '.join(map(str, reps))})" if len(reps) > 1 else ""
        print(f"would {verbs.get(c['action'], 'keep')} {c['bot']}{on}: {safe(str(c['why']))}")


def _err_not_up(row: dict[str, Any]) -> None:
    """One bot that `up` waited for in vain: its state, why, exit code, last event, stderr."""
    safe = termsafe.for_stream(sys.stderr)  # the reasons and the stderr lines are the bot's text
    parts = [f"error: bot {row['bot']} is not up: {safe(str(row.get('why')))}"]
    if row.get("exit_code") is not None:
        parts.append(f"last exit {row['exit_code']}")
    if row.get("last_event"):
        parts.append(f"last event: {safe(str(row['last_event']))}")
    print("; ".join(parts), file=sys.stderr)
    for line in row.get("stderr") or []:
        print(f"  stderr: {safe(str(line))}", file=sys.stderr)


def _simple(op: str) -> Any:
    def run(ns: argparse.Namespace) -> int:
        result = _client().call(op, bots=ns.bots)
        if ns.json:
            print(json.dumps(result))
        else:
            for key, names in termsafe.clean_for(sys.stdout, result).items():
                print(f"{key}: {', '.join(names) or 'nothing'}")
        return 0

    return run


def _fetch(ns: argparse.Namespace, op: str, **args: Any) -> Any:
    """Call ``op``; with ``--json`` print the reply as it is and return None (nothing to render);
    else return it with every string escaped when stdout is a terminal (see :mod:`clawpen.termsafe`)."""
    data = _client().call(op, **args)
    if ns.json:
        print(json.dumps(data, indent=2))
        return None
    return termsafe.clean_for(sys.stdout, data)


def _label(row: dict[str, Any]) -> str:
    """``bot`` for replica 0, ``bot[N]`` for the others (as :attr:`Instance.label`)."""
    return f"{row['bot']}[{row['replica']}]" if row.get("replica") else str(row.get("bot") or "daemon")


def cmd_ps(ns: argparse.Namespace) -> int:
    rows = _fetch(ns, "ps")
    if rows is None:
        return 0
    from clawpen.cli_progress import mem_cell

    head = f"{'BOT':<20} {'STATE':<14} {'HEALTH':<10} {'MEM':>11} {'PID':>8} {'UPTIME':>7} {'RESTARTS':>8}"
    print(f"{head}  LAST EXIT")
    for r in rows:
        label = _label(r)
        up = _ago(r.get("started_at")) if r.get("pid") else "-"
        health = (r.get("health") or "-") if r.get("pid") else "-"
        last = "-" if r.get("last_exit") is None else f"{r['last_exit']} ({r.get('last_reason')})"
        print(
            f"{label:<20} {r['state']:<14} {health:<10} {mem_cell(r):>11} {r.get('pid') or '-':>8} {up:>7} "
            f"{r.get('restarts', 0):>8}  {last}"
        )
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    data = _fetch(ns, "status", bots=ns.bots)
    if data is None:
        return 0
    print(f"bot      {data['bot']} (desired: {data['desired']}, release {data['release']})")
    for inst in data["instances"]:
        print(
            f"replica  {inst['replica']}: {inst['state']} since {_ago(inst['since'])}, "
            f"pid {inst['pid'] or '-'}, restarts {inst['restarts']}"
        )
    print("recent events")
    for e in data["events"]:
        print(f"  {_ts(e['at'])}  {e['kind']:<8} {e.get('to_state') or '':<12} {e['reason']}")
    return 0


def _ts(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def cmd_events(ns: argparse.Namespace) -> int:
    client = _client()
    items = client.stream("events", bot=ns.bot, follow=ns.follow)
    safe = termsafe.for_stream(sys.stdout, raw=ns.raw)
    for item in items:
        if ns.json:
            print(json.dumps(item), flush=True)
        else:
            e = termsafe.clean(item, safe)
            who = _label(e)
            change = f"{e.get('from_state')} -> {e.get('to_state')}" if e.get("to_state") else e["kind"]
            print(f"{_ts(e['at'])}  {who:<16} {change:<26} {e['reason']}", flush=True)
    return 0


def cmd_releases(ns: argparse.Namespace) -> int:
    rows = _fetch(ns, "releases")
    if rows is None:
        return 0
    print(f"{'ID':>4}  {'WHEN':<19}  {'WHO':<10} {'HASH':<16}  SUMMARY")
    for r in rows:
        print(f"{r['id']:>4}  {_ts(r['created'])}  {r['who']:<10} {r['spec_hash']:<16}  {r['summary']}")
    return 0


def cmd_logs(ns: argparse.Namespace) -> int:
    from clawpen.logs.query import follow, parse_since, read_logs

    if ns.action:
        return _ship_status(ns)

    logs_dir = state_dir() / "logs"
    now = time.time()
    since = parse_since(ns.since, now) if ns.since else None
    until = parse_since(ns.until, now, flag="--until") if ns.until else None
    if ns.follow:
        records = follow(logs_dir, ns.bot, grep=ns.grep, tail=ns.tail or 10)
    else:
        records = read_logs(logs_dir, ns.bot, since=since, until=until, grep=ns.grep, tail=ns.tail)
    out = sys.stdout
    safe = termsafe.for_stream(out, raw=ns.raw)  # a bot's escape sequences: shown, not obeyed
    for rec in records:
        if ns.json:
            out.write(json.dumps({"ts": rec.ts, "stream": rec.stream, "text": rec.text}) + "\n")
        else:
            stamp = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.ts)) + f".{int(rec.ts % 1 * 1000):03d}Z"
            )
            out.write(f"{stamp} {rec.stream} {safe(rec.text)}\n")
        if ns.follow:
            out.flush()
    return 0


def _ship_status(ns: argparse.Namespace) -> int:
    """``clawpen logs ship status [--json]``: each log target's shipping, from the daemon."""
    if ns.bot != "ship" or ns.action != ["status"]:
        raise UsageError(
            f"`clawpen logs {ns.bot} {' '.join(ns.action)}` is not a command",
            where="clawpen logs",
            hint="`clawpen logs BOT` shows a bot's lines; `clawpen logs ship status` the log targets",
        )
    data = _fetch(ns, "logs_ship_status")
    if data is None:
        return 0
    if not data["targets"]:
        print("no log targets ([logs.ship] in clawpen.toml)")
        return 0
    print(f"{'TARGET':<16} {'STATE':<12} {'LAG':>8} {'LAG BYTES':>10} {'SENT':>9} {'ACKED':>9} "
          f"{'DROPPED':>8} {'DUPS':>6}  LAST ACK / ERROR")  # fmt: skip
    for t in data["targets"]:
        state = "connected" if t["connected"] else "down"
        last = _ago(t["last_ack"])
        if t["last_error"] and not t["connected"]:
            last = f"{last}; error: {t['last_error']}"
        print(f"{t['target']:<16} {state:<12} {t['lag_seconds']:>7.1f}s {t['lag_bytes']:>10} {t['sent']:>9} "
              f"{t['acked']:>9} {t['dropped']:>8} {t['duplicates']:>6}  {last}")  # fmt: skip
    return 0


def _exec_secret_env(state: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The bot's ``secret_env`` values, read from the vault in this (root) process, as the
    daemon reads them for the bot's start: they never travel in a reply of the daemon."""
    if not names:
        return {}
    from clawpen.vault.store import Vault

    return {n: v.decode(errors="replace") for n, v in Vault(state).values_for(names).items()}


def cmd_exec(ns: argparse.Namespace) -> int:
    from clawpen.daemon.runtime import instance_plan
    from clawpen.plan.build import HostFacts
    from clawpen.sandbox.cgroups import detect
    from clawpen.sandbox.enter import enter
    from clawpen.sandbox.seccomp import bpf_for, default_policy
    from clawpen.spec.models import Bot

    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        raise UsageError("no command to run", where="clawpen exec", hint="write: clawpen exec BOT -- sh")
    target = _client().call("exec_target", bot=ns.bot, replica=ns.replica)
    state = state_dir()
    bot = Bot.model_validate(target["spec"], context={"base_dir": target["base_dir"]})
    policy = default_policy()
    link = None
    if target.get("link"):
        from clawpen.net.links import Link

        link = Link(**target["link"])
    plan = instance_plan(
        bot,
        ns.bot,
        ns.replica,
        target["base_dir"],
        state_dir=state,
        host=HostFacts.probe(),
        seccomp=policy,
        link=link,
    )
    cgroup = detect().attach(target["cgroup"])
    if plan.container is not None:  # join the container's own cgroup, as docker exec does
        from clawpen.container.handle import cgroup_of

        cgroup = cgroup_of(int(target["sandbox_pid"]), cgroup)
    proc = enter(
        int(target["sandbox_pid"]),
        plan,
        cgroup,
        command,
        bpf=bpf_for(policy, state / "cache"),
        new_group=False,
        secret_env=_exec_secret_env(state, plan.secret_env),
    )
    code = proc.wait()
    return 128 - code if code < 0 else code


def cmd_token(ns: argparse.Namespace) -> int:
    client = _client()
    action = ns.token_action
    if action == "create":
        from clawpen.spec.units import UnitError, parse_duration

        try:
            expires = parse_duration(ns.expires) if ns.expires else None
        except UnitError as err:
            raise UsageError(str(err), where="--expires", hint=err.hint) from None
        made = client.call("token_create", role=ns.role, name=ns.name, expires_in=expires)
        if ns.json:
            print(json.dumps(made))
        else:
            print(made["token"])
            print(f"token {made['id']} ({made['role']}): keep it now, it is not shown again", file=sys.stderr)
    elif action == "ls":
        rows = client.call("token_ls")
        if ns.json:
            print(json.dumps(rows, indent=2))
        for r in [] if ns.json else termsafe.clean_for(sys.stdout, rows):
            until = _ts(r["expires"]) if r.get("expires") else "never"
            print(f"{r['id']}  {r['role']:<8}  expires {until}  {r.get('name', '')}")
    else:
        client.call("token_revoke", id=ns.id)
        print(f"token {ns.id} revoked", file=sys.stderr)
    return 0


COMMANDS = {
    "token": cmd_token,
    "exec": cmd_exec,
    "daemon": cmd_daemon,
    "up": cmd_up,
    "down": _simple("down"),
    "start": _simple("start"),
    "stop": _simple("stop"),
    "restart": _simple("restart"),
    "ps": cmd_ps,
    "status": cmd_status,
    "events": cmd_events,
    "releases": cmd_releases,
    "logs": cmd_logs,
}
