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
* ``not-judged``: the probe could not attempt the action in this sandbox (e.g. the image has no
  python3); never counted as contained;
* ``vm-boundary`` (the vm tier only): a kernel-attack action (:data:`~clawpen.validate.actions.
  KERNEL_ATTACKS`) ran against the guest's own kernel (its answer names a boot id that is not the
  host's) and the host shows no trace; whether the guest's kernel allowed it or not, the host's
  kernel never saw it. Counted as contained;
* ``error``: the probe gave no answer (setup failed, crashed).

The sandboxes are the bot's tier's (``tier = "container"``: a container of the bot's image per
action; ``tier = "vm"``: a throwaway guest per action, the probe run by the guest's init as the
bot's uid; through the Tier and RunningSandbox protocols only); the peer bot is always a sandbox.

Host fixtures the actions need (a victim process of the bot's uid, a loopback service, an
abstract socket, a marker in /root, a second "peer" bot with a secret and a loopback service)
are set up once per run by :class:`Context` and always removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from clawpen.errors import HostError, UsageError
from clawpen.sandbox.tier import Tier
from clawpen.spec.policy import BotPolicy
from clawpen.validate import probes
from clawpen.validate.actions import ACTIONS, Action
from clawpen.validate.context import (
    CONTROL_ENV,
    NOBODY,
    PROBE_TIMEOUT,
    PY,
    VM_BOOT,
    Context,
)
from clawpen.validate.entered import Inside
from clawpen.validate.sysprobe import FORCE_ENV as SYSPROBE_ENV

if TYPE_CHECKING:
    from clawpen.sandbox.namespace import NamespaceTier


class Outcome(NamedTuple):
    id: str
    group: str
    title: str
    verdict: str  # contained | vm-boundary | escaped | control-failed | not-judged | error
    inside: str
    control: str

    def to_dict(self) -> dict[str, str]:
        return self._asdict()


class _Pipes:
    """The probe's stdout and stderr: two named pipes in the run's folder (the container tier binds
    a pipe by its path; the sandbox tier takes the descriptor), read once the run has ended."""

    def __init__(self, folder: Path) -> None:
        self.readers: list[int] = []
        self.writers: list[int] = []
        for name in ("out", "err"):
            path = folder / f"probe-{name}"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.mkfifo(path, 0o600)
            self.readers.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            self.writers.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
            with contextlib.suppress(OSError):  # room for a long traceback: nothing blocks the probe
                fcntl.fcntl(self.writers[-1], fcntl.F_SETPIPE_SZ, 1 << 20)

    def read(self) -> tuple[str, str]:
        """What the probe wrote (closes the pipes)."""
        self.close(self.writers)
        texts = []
        for fd in self.readers:
            data = b""
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 1 << 16):
                    data += chunk
            texts.append(data.decode(errors="replace"))
        self.close(self.readers)
        return texts[0], texts[1]

    @staticmethod
    def close(fds: list[int]) -> None:
        while fds:
            os.close(fds.pop())


def _run_inside(ctx: Context, tier: Tier, action: Action) -> Inside:
    """The probe in a throwaway sandbox of ``tier`` (its Tier and RunningSandbox protocols only):
    (its JSON, how the run ended, stderr tail)."""
    from clawpen.plan.build import HostFacts, build_plan
    from clawpen.sandbox.seccomp import default_policy
    from clawpen.sandbox.tier import Stdio, ended_within

    kernel_id = probes.KERNEL_ID if ctx.policy.vm is not None else ""
    argv = (ctx.python, "-c", probes.PRELUDE + kernel_id + action.code, *action.args(ctx, "in"))
    policy = ctx.policy._replace(command=argv, workspace=str(ctx.workspace))
    plan = build_plan(policy, ctx.ident, HostFacts.probe(), default_policy())
    dummy = {name: b"clawpen-hostile-dummy" for name in policy.secrets}
    pipes = _Pipes(ctx.base)
    try:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sandbox = tier.start(
                plan,
                cgroup_name=ctx.cgroup_name,
                stdio=Stdio(null, pipes.writers[0], pipes.writers[1]),
                secrets=dummy,
            )
        finally:
            os.close(null)
        ended = False
        try:
            ended = ended_within(sandbox, PROBE_TIMEOUT + (VM_BOOT if ctx.policy.vm is not None else 0.0))
            timed_out = not ended
            if timed_out:
                sandbox.kill()
                ended = ended_within(sandbox, PROBE_TIMEOUT)
            result = sandbox.collect()
            ended = True
        finally:
            if not ended:  # interrupted (Ctrl-C): it must end before its teardown
                sandbox.kill()
                ended_within(sandbox, PROBE_TIMEOUT)
            sandbox.teardown()
        text, errtext = pipes.read()
    finally:
        pipes.close(pipes.writers)
        pipes.close(pipes.readers)
    inside = probes.last_json(text)
    if inside is None and ctx.python in errtext and ("No such file" in errtext or "not found" in errtext):
        missing = f"the sandbox has no {ctx.python} to run the probe"
        inside = {"did": False, "detail": missing, "judged": False}
    return inside, "timeout" if timed_out else str(result.reason), errtext.strip()[-200:]


def _run_control(
    ctx: Context, action: Action, *, sysprobe: bool = False
) -> tuple[dict[str, Any] | None, str]:
    argv = [PY, "-c", probes.PRELUDE + action.code, *action.args(ctx, "out")]
    env = {**CONTROL_ENV, SYSPROBE_ENV: "1"} if sysprobe else CONTROL_ENV
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
            env=env, close_fds=True, **kw,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return probes.last_json(proc.stdout), proc.stderr.strip()[-200:]


def judge(action: Action, inside: dict[str, Any] | None, reason: str, host_escape: str | None,
          control: dict[str, Any] | None, *, host_boot: str | None = None) -> str:  # fmt: skip
    """The verdict for one action from what happened inside, on the host, and in the control.
    ``host_boot``: the host kernel's boot id, in the vm tier (its kernel-attack actions that ran
    on another kernel are ``vm-boundary``)."""
    killed = reason in ("oom", "signaled", "disk") and action.killed_ok
    if host_escape:
        return "escaped"
    if host_boot is not None and action.kernel and on_guest_kernel(inside, host_boot):
        return "vm-boundary"
    if inside is not None and inside["did"]:
        return "escaped"
    if inside is not None and inside.get("judged") is False:
        return "not-judged"
    if inside is None and not killed:
        return "error"
    ok = control is not None and (action.control_ok(control) if action.control_ok else bool(control["did"]))
    return "contained" if ok else "control-failed"


def on_guest_kernel(inside: dict[str, Any] | None, host_boot: str) -> bool:
    """The probe answered and named a kernel (boot id) that is not the host's."""
    if inside is None or inside.get("judged") is False:
        return False
    boot = inside.get("boot")
    return isinstance(boot, str) and boot not in ("", "unknown", host_boot)


def host_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


SYSPROBE_NOTE = "no ctypes in the sandbox's python3"
GUEST_ALLOWED = "the guest's own kernel allowed it"
GUEST_REFUSED = "the guest's own kernel refused it"


def _via(result: dict[str, Any]) -> str:
    via = result.get("via")
    return f" (via {via}: {SYSPROBE_NOTE})" if via else ""


def run_action(ctx: Context, inside_run: Callable[[Action], Inside], action: Action) -> Outcome:
    """One action: its probe run by ``inside_run`` (in a fresh sandbox, or entered into a running
    one), the host's check, and the positive control."""
    inside, reason, errtext = inside_run(action)
    host_escape = action.host_check(ctx) if action.host_check else None
    used_sysprobe = inside is not None and bool(inside.get("via"))
    control, cerr = _run_control(ctx, action, sysprobe=used_sysprobe)
    host_boot = host_boot_id() if ctx.policy.vm is not None else None
    verdict = judge(action, inside, reason, host_escape, control, host_boot=host_boot)
    if inside is not None:
        seen = str(inside["detail"]) + _via(inside)
        if verdict == "vm-boundary":
            how = GUEST_ALLOWED if inside["did"] else GUEST_REFUSED
            seen = f"{seen} ({how}, boot id {str(inside['boot'])[:8]})"
    else:
        seen = f"run ended: {reason}" + (f" ({errtext})" if errtext else "")
    if host_escape:
        seen = f"{seen}; host: {host_escape}"
    ctl = str(control["detail"]) + _via(control) if control is not None else f"no answer ({cerr})"
    return Outcome(action.id, action.group, action.title, verdict, seen, f"{action.control}: {ctl}")


def run_hostile(
    policy: BotPolicy,
    state: Path,
    *,
    only: set[str] | None = None,
    progress: Callable[[Outcome], None] | None = None,
    entered: bool = False,
) -> list[Outcome]:
    """Run every built-in action (or those in ``only``) against ``policy``; root only. Each in a
    fresh sandbox of the bot's tier, or with ``entered`` into one running sandbox of the bot, as
    ``clawpen exec`` enters it (:mod:`clawpen.validate.entered`)."""
    from clawpen.sandbox.namespace import NamespaceTier
    from clawpen.validate.entered import EnteredRunner, runner_bpf

    if os.geteuid() != 0:
        raise HostError(
            "validate --hostile needs root: it builds sandboxes and runs the controls as other uids",
            where="validate --hostile",
            hint="run it as root (sudo clawpen validate --hostile)",
        )
    if entered and policy.vm is not None:
        raise UsageError(
            "--exec cannot enter a vm bot: commands cannot be run inside a running guest (no guest agent)",
            where="clawpen validate --hostile --exec",
            hint="drop --exec: each action then runs in a throwaway guest of the bot's policy",
        )
    sandboxes = NamespaceTier(state, kill_grace=2.0)  # the peer bot's tier, and a sandbox bot's
    tier, built = _tier_for(policy, state, sandboxes)
    ctx = Context(policy, state)  # no host change yet
    outcomes: list[Outcome] = []
    runner: EnteredRunner | None = None
    try:
        ctx.open(sandboxes, built)
        if entered:
            runner = EnteredRunner(ctx, tier, runner_bpf(ctx))
        for action in ACTIONS:
            if only and action.id not in only and action.group not in only:
                continue
            inside_run = runner or (lambda a: _run_inside(ctx, tier, a))
            outcome = run_action(ctx, inside_run, action)
            outcomes.append(outcome)
            if progress:
                progress(outcome)
    finally:
        if runner is not None:
            runner.close()
        ctx.close()
    return outcomes


def _tier_for(policy: BotPolicy, state: Path, sandboxes: NamespaceTier) -> tuple[Tier, str | None]:
    """The bot's tier, and the syscall probe its sandboxes need (None: their python has ctypes)."""
    from clawpen.paths import cache_dir
    from clawpen.validate.sysprobe import build

    if policy.vm is not None:
        from clawpen.vm.tier import VmTier

        # the guest's python: the host's (its /usr, shared), or an image's that may lack ctypes
        built = build(cache_dir(state)) if policy.vm.image_root is not None else None
        return VmTier(state, sandboxes), built
    if policy.container is None:
        return sandboxes, None
    from clawpen.container.tier import ContainerTier

    return ContainerTier(state), build(cache_dir(state))


def run_notes(policy: BotPolicy, outcomes: list[Outcome], *, entered: bool = False) -> list[str]:
    """What the report says about how the actions ran in this bot's tier."""
    notes = []
    if entered:
        notes.append(
            "--exec: each action was entered into one running sandbox of the bot, as clawpen exec and "
            "cmd health checks enter it (the bot's namespaces, uid, cgroup and clawpen's seccomp filter)"
        )
    if policy.container is not None:
        how = "entered into a container" if entered else "ran in a throwaway container"
        notes.append(
            f"container tier: each action {how} of {policy.container.image} "
            "(same uid, limits, seccomp, read-only root; no network: loopback only)"
        )
    if policy.vm is not None:
        notes.append(
            "vm tier: each action ran in a throwaway guest of the bot's policy (the guest's kernel, "
            "the bot's uid there; QEMU in the bot's sandbox on the host; no network: no gateway link)"
        )
        boundary = [o.id for o in outcomes if o.verdict == "vm-boundary"]
        if boundary:
            allowed = [o.id for o in outcomes if o.verdict == "vm-boundary" and GUEST_ALLOWED in o.inside]
            notes.append(
                f"contained by the VM boundary ({len(boundary)} kernel-attack actions: "
                f"{', '.join(boundary)}): they reached the guest's own kernel, never the host's"
                + (f"; the guest's kernel allowed {', '.join(allowed)}" if allowed else "")
            )
    via = [o.id for o in outcomes if SYSPROBE_NOTE in o.inside]
    if via:
        notes.append(
            f"the sandbox's python3 has no ctypes: {len(via)} actions ({', '.join(via)}) ran "
            "clawpen-sysprobe (a static helper copied into the throwaway workspace), as did their controls"
        )
    judged = [o.id for o in outcomes if o.verdict == "not-judged"]
    if judged:
        notes.append(f"not judged in this tier (never counted as contained): {', '.join(judged)}")
    return notes


CONTAINED = ("contained", "vm-boundary")


def all_contained(outcomes: list[Outcome]) -> bool:
    return bool(outcomes) and all(o.verdict in CONTAINED for o in outcomes)


def action_ids() -> Iterator[str]:
    return (a.id for a in ACTIONS)
