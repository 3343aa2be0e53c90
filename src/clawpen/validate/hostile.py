"""``clawpen validate --hostile``: built-in hostile actions, each in a throwaway sandbox with a
bot's policy, each with a positive control run on the host.

For every action (:mod:`clawpen.validate.actions`) the probe (:mod:`clawpen.validate.probes`)
runs twice: inside a fresh sandbox built from the bot's policy (its command replaced by the
probe, its workspace by a throwaway folder, its secrets by dummy values), and on the host as
root, uid 65534, or the bot's own uid, whichever makes the comparison fair. The verdict:

* ``contained``: the action failed inside (or the kernel killed the run, for resource actions),
  the host shows no trace, and the same action worked outside;
* ``escaped``: the action worked inside, or the host shows its effect;
* ``control-failed``: contained inside, but it did not work outside either, so this host
  cannot show that the containment is what stopped it;
* ``error``: the probe gave no answer (setup failed, crashed).

Host fixtures the actions need (a victim process of the bot's uid, a loopback service, an
abstract socket, a marker in /root, a second "peer" bot with a secret and a loopback service)
are set up once per run by :class:`Context` and always removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from clawpen.errors import HostError
from clawpen.spec.policy import BotPolicy
from clawpen.validate import probes
from clawpen.validate.actions import ACTIONS, Action
from clawpen.validate.context import (
    CONTROL_ENV,
    NOBODY,
    PROBE_TIMEOUT,
    PY,
    Context,
)


class Outcome(NamedTuple):
    id: str
    group: str
    title: str
    verdict: str  # contained | escaped | control-failed | error
    inside: str
    control: str

    def to_dict(self) -> dict[str, str]:
        return self._asdict()


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict) and "did" in data:
                    return data
    return None


def _run_inside(ctx: Context, tier: Any, action: Action) -> tuple[dict[str, Any] | None, str, str]:
    """The probe in a throwaway sandbox: (its JSON, how the run ended, stderr tail)."""
    from clawpen.plan.build import HostFacts, build_plan
    from clawpen.sandbox.seccomp import default_policy
    from clawpen.sandbox.tier import Stdio

    argv = (PY, "-c", probes.PRELUDE + action.code, *action.args(ctx, "in"))
    policy = ctx.policy._replace(command=argv, workspace=str(ctx.workspace))
    plan = build_plan(policy, ctx.ident, HostFacts.probe(), default_policy())
    dummy = {name: b"clawpen-hostile-dummy" for name in policy.secrets}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sandbox = tier.start(plan, stdio=Stdio(null, out.fileno(), err.fileno()), secrets=dummy)
        finally:
            os.close(null)
        try:
            result = sandbox.wait(PROBE_TIMEOUT)
        finally:
            sandbox.teardown()
        out.seek(0)
        err.seek(0)
        text, errtext = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return _last_json(text), str(result.reason), errtext.strip()[-200:]


def _run_control(ctx: Context, action: Action) -> tuple[dict[str, Any] | None, str]:
    argv = [PY, "-c", probes.PRELUDE + action.code, *action.args(ctx, "out")]
    kw: dict[str, Any] = {}
    if action.control == "nobody":
        kw = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    elif action.control == "bot":
        kw = {"user": ctx.ident.uid, "group": ctx.ident.gid, "extra_groups": []}
    elif action.control == "root-mountns":
        argv = ["unshare", "--mount", "--propagation", "private", *argv]
    elif action.control == "root-peer-netns":
        argv = ["nsenter", f"--net=/proc/{ctx.peer_pid}/ns/net", *argv]
    try:
        proc = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=PROBE_TIMEOUT, cwd=ctx.control_dir,
            env=CONTROL_ENV, close_fds=True, **kw,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return _last_json(proc.stdout), proc.stderr.strip()[-200:]


def judge(action: Action, inside: dict[str, Any] | None, reason: str, host_escape: str | None,
          control: dict[str, Any] | None) -> str:  # fmt: skip
    """The verdict for one action from what happened inside, on the host, and in the control."""
    killed = reason in ("oom", "signaled", "disk") and action.killed_ok
    if host_escape or (inside is not None and inside["did"]):
        return "escaped"
    if inside is None and not killed:
        return "error"
    ok = control is not None and (action.control_ok(control) if action.control_ok else bool(control["did"]))
    return "contained" if ok else "control-failed"


def run_action(ctx: Context, tier: Any, action: Action) -> Outcome:
    inside, reason, errtext = _run_inside(ctx, tier, action)
    host_escape = action.host_check(ctx) if action.host_check else None
    control, cerr = _run_control(ctx, action)
    verdict = judge(action, inside, reason, host_escape, control)
    if inside is not None:
        seen = str(inside["detail"])
    else:
        seen = f"run ended: {reason}" + (f" ({errtext})" if errtext else "")
    if host_escape:
        seen = f"{seen}; host: {host_escape}"
    ctl = str(control["detail"]) if control is not None else f"no answer ({cerr})"
    return Outcome(action.id, action.group, action.title, verdict, seen, f"{action.control}: {ctl}")


def run_hostile(
    policy: BotPolicy,
    state: Path,
    *,
    only: set[str] | None = None,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every built-in action (or those in ``only``) against ``policy``; root only."""
    from clawpen.sandbox.namespace import NamespaceTier

    if os.geteuid() != 0:
        raise HostError(
            "validate --hostile needs root: it builds sandboxes and runs the controls as other uids",
            where="validate --hostile",
            hint="run it as root (sudo clawpen validate --hostile)",
        )
    tier = NamespaceTier(state, kill_grace=2.0)
    ctx = Context(policy, state)  # no host change yet
    outcomes: list[Outcome] = []
    try:
        ctx.open(tier)
        for action in ACTIONS:
            if only and action.id not in only and action.group not in only:
                continue
            outcome = run_action(ctx, tier, action)
            outcomes.append(outcome)
            if progress:
                progress(outcome)
    finally:
        ctx.close()
    return outcomes


def all_contained(outcomes: list[Outcome]) -> bool:
    return bool(outcomes) and all(o.verdict == "contained" for o in outcomes)


def action_ids() -> Iterator[str]:
    return (a.id for a in ACTIONS)
