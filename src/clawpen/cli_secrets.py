"""``clawpen secrets ...`` and ``clawpen audit-log`` on the command line: parse, call, render.

A secret's value is read from a file (``--from-file``), from stdin when it is not a terminal, or
from a prompt that does not echo. ``secrets get`` prints a value on a terminal only (a pipe
needs ``--force``); ``secrets add-to BOT NAME`` also adds NAME to the bot's ``secrets`` in the spec
file (:mod:`clawpen.spec.edit`). Every ``secrets`` command appends a record (the secret's name
only) to the audit log, which ``clawpen audit-log --verify`` checks.
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


def add_commands(sub: Any) -> None:
    """Add ``secrets`` and ``audit-log`` to the main parser's subcommands."""
    secrets = sub.add_parser("secrets", help="store, list and remove encrypted secrets for bots")
    actions = secrets.add_subparsers(dest="secrets_cmd", metavar="ACTION", required=True)
    put = actions.add_parser("set", help="store a secret (value from --from-file, stdin, or a prompt)")
    put.add_argument("name", metavar="NAME", help="e.g. API_TOKEN")
    put.add_argument("--from-file", metavar="FILE", help="read the value from FILE, byte for byte")
    get = actions.add_parser("get", help="print a secret's value (on a terminal only, unless --force)")
    get.add_argument("name", metavar="NAME")
    get.add_argument("--force", action="store_true", help="print it even when stdout is not a terminal")
    add_to = actions.add_parser(
        "add-to", help="store a secret and add it to a bot's `secrets` in the spec file (then `up`)"
    )
    add_to.add_argument("bot", metavar="BOT")
    add_to.add_argument("name", metavar="NAME", help="e.g. ANTHROPIC_API_KEY")
    add_to.add_argument(
        "--env", action="store_true", help="also give it to the bot as an environment variable"
    )
    add_to.add_argument("--from-file", metavar="FILE", help="read the value from FILE, byte for byte")
    add_to.add_argument(
        "-f", "--file", default="clawpen.toml", metavar="SPEC", help="spec file (default clawpen.toml)"
    )
    ls = actions.add_parser("ls", help="list secret names and when each was set (never values)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    rm = actions.add_parser("rm", help="remove a secret")
    rm.add_argument("name", metavar="NAME")
    actions.add_parser("rotate-key", help="re-encrypt every secret under a new master key")
    audit = sub.add_parser("audit-log", help="the audit log of operator and admin actions")
    audit.add_argument("--verify", action="store_true", help="check the hash chain; exit 1 if tampered")
    audit.add_argument("--json", action="store_true", help="machine-readable output")


def _strip_newline(value: bytes) -> bytes:
    """Drop one trailing newline (``\\n`` or ``\\r\\n``), as ``echo`` and a prompt add one."""
    if value.endswith(b"\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith(b"\n") else value


def _read_value(ns: argparse.Namespace) -> bytes:
    if ns.from_file:
        try:
            return Path(ns.from_file).read_bytes()
        except OSError as err:
            raise UsageError(
                f"cannot read {ns.from_file}: {err.strerror}",
                where=f"clawpen secrets {ns.secrets_cmd} --from-file",
                hint="give a readable file",
            ) from None
    if not sys.stdin.isatty():
        return _strip_newline(sys.stdin.buffer.read())
    import getpass

    first = getpass.getpass(f"value for {ns.name}: ")
    if getpass.getpass(f"again, to confirm {ns.name}: ") != first:
        raise UsageError("the two values differ", where=f"clawpen secrets {ns.secrets_cmd}", hint="try again")
    return _strip_newline(first.encode())


def _vault(state: Path) -> Any:
    from clawpen.vault.store import Vault

    return Vault(state)


def _through_daemon(ns: argparse.Namespace, action: str) -> int:
    """With a token, go through the daemon, which checks the token's role and audits."""
    import base64

    from clawpen.daemon.client import Client

    client = Client(state_dir())
    if action == "set":
        client.call("secrets_set", name=ns.name, value_b64=base64.b64encode(_read_value(ns)).decode())
        print(f"secret {ns.name} set", file=sys.stderr)
    elif action == "rm":
        client.call("secrets_rm", name=ns.name)
        print(f"secret {ns.name} removed", file=sys.stderr)
    elif action == "get":
        reply = client.call("secrets_get", name=ns.name)
        _print_value(base64.b64decode(reply["value_b64"]))
    else:
        entries = client.call("secrets_ls")
        if ns.json:
            print(json.dumps(entries, indent=2))
        else:
            print("\n".join(e["name"] for e in termsafe.clean_for(sys.stdout, entries)))
    return 0


def _set_local(ns: argparse.Namespace, vault: Any) -> None:
    from clawpen import audit
    from clawpen.vault.store import check_user_name

    check_user_name(ns.name)
    value = _read_value(ns)
    if not value:
        raise UsageError(
            f"empty value for {ns.name}",
            where=f"clawpen secrets {ns.secrets_cmd}",
            hint="give a value, or use rm",
        )
    vault.set(ns.name, value)
    audit.append(vault.state_dir, audit.caller(), "secrets.set", {"name": ns.name})
    print(f"secret {ns.name} set", file=sys.stderr)


def _refuse_pipe(ns: argparse.Namespace) -> None:
    """A secret is shown on a terminal only: on a pipe or in a file it would outlive the moment."""
    if not ns.force and not sys.stdout.isatty():
        raise UsageError(
            "refusing to print a secret to a pipe; use --force",
            where="clawpen secrets get",
            hint=f"run it on a terminal, or `clawpen secrets get {ns.name} --force` to pipe it on purpose",
        )


def _print_value(value: bytes) -> None:
    out = sys.stdout.buffer
    out.write(value)
    if sys.stdout.isatty() and not value.endswith(b"\n"):
        out.write(b"\n")
    out.flush()


def _add_to(ns: argparse.Namespace) -> int:
    """``secrets add-to BOT NAME [--env]``: check the spec and the edit first, then store the
    value, then write the spec, so a refused edit stores nothing."""
    from clawpen.fsutil import write_atomic
    from clawpen.spec.edit import add_secret
    from clawpen.spec.loader import load_spec, parse_spec_text
    from clawpen.vault.store import check_user_name

    check_user_name(ns.name)
    path = Path(ns.file)
    loaded = load_spec(path)
    if ns.bot not in loaded.spec.bots:
        known = ", ".join(sorted(loaded.spec.bots)) or "none"
        raise UsageError(f"no bot {ns.bot} in {path}", where=str(path), hint=f"the bots there are: {known}")
    new_text = add_secret(loaded.text, ns.bot, ns.name, env=ns.env)
    parse_spec_text(new_text, path)  # the edited spec must still be valid
    if os.environ.get("CLAWPEN_TOKEN"):
        _through_daemon(ns, "set")
    else:
        _set_local(ns, _vault(state_dir()))
    if new_text != loaded.text:
        mode = path.stat().st_mode & 0o777
        write_atomic(path, new_text.encode(), mode=mode)
        what = "secrets and secret_env" if ns.env else "secrets"
        print(f"added {ns.name} to [bots.{ns.bot}] {what} in {path}", file=sys.stderr)
    else:
        print(f"{ns.name} was already in [bots.{ns.bot}] of {path}", file=sys.stderr)
    print("run `clawpen up` to apply", file=sys.stderr)
    return 0


def cmd_secrets(ns: argparse.Namespace) -> int:
    """Run one ``clawpen secrets ACTION``."""
    from clawpen import audit
    from clawpen.vault.store import check_user_name

    state = state_dir()
    action = ns.secrets_cmd
    if action == "get":
        check_user_name(ns.name)
        _refuse_pipe(ns)
    if action == "add-to":
        return _add_to(ns)
    if os.environ.get("CLAWPEN_TOKEN") and action in ("set", "ls", "rm", "get"):
        return _through_daemon(ns, action)
    vault = _vault(state)
    if action == "set":
        _set_local(ns, vault)
    elif action == "get":
        value = vault.get(ns.name)
        audit.append(state, audit.caller(), "secrets.get", {"name": ns.name})
        _print_value(value)
    elif action == "ls":
        entries = vault.entries()
        audit.append(state, audit.caller(), "secrets.ls", {"count": len(entries)})
        if ns.json:
            print(json.dumps([{"name": e.name, "set_at": e.set_at} for e in entries], indent=2))
        else:
            for e in entries:
                print(f"{e.name:<32} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.set_at))}")
    elif action == "rm":
        vault.remove(ns.name)
        audit.append(state, audit.caller(), "secrets.rm", {"name": ns.name})
        print(f"secret {ns.name} removed", file=sys.stderr)
    else:  # rotate-key
        count = vault.rotate_key()
        audit.append(state, audit.caller(), "secrets.rotate-key", {"count": count})
        print(f"master key rotated; {count} secret{'s' if count != 1 else ''} re-encrypted", file=sys.stderr)
    return 0


def cmd_audit_log(ns: argparse.Namespace) -> int:
    """``clawpen audit-log [--verify] [--json]``: 0 when intact, 1 when tampered with."""
    from clawpen import audit

    state = state_dir()
    if not ns.verify:
        safe = termsafe.for_stream(sys.stdout)  # records quote names and paths people chose
        for record in audit.read(state):
            if ns.json:
                print(json.dumps(record))
            else:
                rec = termsafe.clean(record, safe)
                detail = " ".join(f"{k}={v}" for k, v in sorted(rec.get("detail", {}).items()))
                print(
                    f"{rec.get('seq', '?'):>5}  {rec.get('ts', '?')}  {rec.get('who', '?'):<12} "
                    f"{rec.get('action', '?'):<20} {detail}"
                )
        return 0
    problems = audit.verify(state)
    count = len(audit.read(state))
    if ns.json:
        print(json.dumps({"ok": not problems, "records": count, "problems": problems}, indent=2))
    elif not problems:
        print(f"audit log intact: {count} record{'s' if count != 1 else ''}")
    else:
        path = state / audit.AUDIT_FILE
        print(f"error: the audit log has been tampered with ({path})", file=sys.stderr)
        for p in problems:
            print(f"  {termsafe.for_stream(sys.stderr)(str(p))}", file=sys.stderr)
        print("hint: restore it from a backup and find out who changed it", file=sys.stderr)
    return 1 if problems else 0


COMMANDS = {"secrets": cmd_secrets, "audit-log": cmd_audit_log}
