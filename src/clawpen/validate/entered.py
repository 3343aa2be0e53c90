"""``clawpen validate --hostile --exec``: the hostile actions entered into one running sandbox of
the bot, as ``clawpen exec`` and ``cmd`` health checks enter it (:meth:`RunningSandbox.enter`).

The default run starts a fresh sandbox per action with the probe as the bot's command: that is
the bot's own confinement. A command entered into a running bot is confined by the tier's enter
path instead (the bot's namespaces, uid, no capabilities, clawpen's seccomp filter, the bot's
cgroup), which is what a health-check script the bot can rewrite runs under. ``--exec`` attacks
that path: one sandbox of the bot's policy runs a quiet holder (the probe's python, sleeping),
and each action's probe is entered into it. A resource action may end the holder (the OOM killer
chooses); the next action then starts a new one.
"""

from __future__ import annotations

import contextlib
import subprocess
from typing import TYPE_CHECKING, Any

from clawpen.errors import SandboxError
from clawpen.validate import probes
from clawpen.validate.context import PROBE_TIMEOUT, Context

if TYPE_CHECKING:
    from clawpen.plan.model import Plan
    from clawpen.sandbox.tier import RunningSandbox, Tier
    from clawpen.validate.actions import Action

HOLDER = "import time\nwhile True:\n    time.sleep(3600)\n"
Inside = tuple[dict[str, Any] | None, str, str]  # the probe's JSON, how it ended, stderr tail


def _reason(code: int) -> str:
    """How an entered command ended, from the helper's exit status (a signal death re-raised)."""
    return "signaled" if code < 0 or 128 < code <= 128 + 64 else "exited"


class EnteredRunner:
    """One running sandbox of the bot's policy, and each probe entered into it (see the module)."""

    def __init__(self, ctx: Context, tier: Tier, bpf: bytes) -> None:
        self.ctx, self.tier, self.bpf = ctx, tier, bpf
        self.sandbox: RunningSandbox | None = None
        self.plan: Plan | None = None

    def _running(self) -> tuple[RunningSandbox, Plan]:
        from clawpen.plan.build import HostFacts, build_plan
        from clawpen.sandbox.seccomp import default_policy
        from clawpen.sandbox.tier import Stdio, ended_within

        if self.sandbox is not None and self.plan is not None and not ended_within(self.sandbox, 0):
            return self.sandbox, self.plan
        self.close()
        ctx = self.ctx
        policy = ctx.policy._replace(command=(ctx.python, "-c", HOLDER), workspace=str(ctx.workspace))
        plan = build_plan(policy, ctx.ident, HostFacts.probe(), default_policy())
        dummy = {name: b"clawpen-hostile-dummy" for name in policy.secrets}
        self.sandbox = self.tier.start(plan, cgroup_name=ctx.cgroup_name, stdio=Stdio(), secrets=dummy)
        self.plan = plan
        return self.sandbox, plan

    def __call__(self, action: Action) -> Inside:
        from clawpen.sandbox.enter import stop

        ctx = self.ctx
        argv = [ctx.python, "-c", probes.PRELUDE + action.code, *action.args(ctx, "in")]
        try:
            sandbox, plan = self._running()
            proc = sandbox.enter(
                plan,
                argv,
                bpf=self.bpf,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except SandboxError as failed:
            message = str(failed)
            if ctx.python in message and "not found" in message:
                missing = f"the sandbox has no {ctx.python} to run the probe"
                return {"did": False, "detail": missing, "judged": False}, "setup-failed", message
            return None, "setup-failed", message[-200:]
        try:
            out, err = proc.communicate(timeout=PROBE_TIMEOUT)
            reason = _reason(proc.returncode)
        except subprocess.TimeoutExpired:
            stop(proc)
            out, err = proc.communicate()
            reason = "timeout"
        finally:
            stop(proc)  # what it left in its process group
        text, errtext = out.decode(errors="replace"), err.decode(errors="replace")
        return probes.last_json(text), reason, errtext.strip()[-200:]

    def close(self) -> None:
        from clawpen.sandbox.tier import ended_within

        sandbox, self.sandbox, self.plan = self.sandbox, None, None
        if sandbox is None:
            return
        with contextlib.suppress(Exception):
            sandbox.kill()
            if ended_within(sandbox, PROBE_TIMEOUT):
                sandbox.collect()  # reaps the sandbox tier's monitor
        with contextlib.suppress(Exception):
            sandbox.teardown()


def runner_bpf(ctx: Context) -> bytes:
    """The seccomp program an entered command gets: the bot's, as the daemon gives ``exec``."""
    from clawpen.paths import cache_dir
    from clawpen.plan.build import HostFacts, build_plan
    from clawpen.sandbox.seccomp import bpf_for, default_policy

    plan = build_plan(ctx.policy._replace(command=("true",)), ctx.ident, HostFacts.probe(), default_policy())
    return bpf_for(plan.seccomp, cache_dir(ctx.state))
