"""The container tier: a bot in its own container on Docker Engine (or Podman's Docker API).

One container per instance, named ``clawpen-<bot>-<replica>`` (the bot's cgroup name, whose
prefix keeps two daemons apart), created hardened (:mod:`clawpen.container.create`), with the
container's cgroup under clawpen's ``clawpen/<bot>.<replica>`` (metrics come from the same
cgroup code as the sandbox tier's, and the CPU quota is set there: :func:`cpu_limit`). Start:
create, start, read the init's host pid, let the network helper wire the link into the
container's network namespace (``wire_net``), then open the gate: the bot's command runs only
after that. The engine's client is made on first use: a daemon without an engine still starts,
and starting a container bot then fails with a HostError.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawpen.container import create, loader
from clawpen.container.files import InstanceFiles, static_busybox, write_secrets
from clawpen.container.handle import ContainerSandbox, oom_eventfd, remove_parent
from clawpen.errors import ClawpenError, HostError, SandboxError
from clawpen.paths import cache_dir
from clawpen.plan.model import CgroupLimits
from clawpen.procfs import pid_start_time
from clawpen.sandbox.seccomp import bpf_for
from clawpen.sandbox.tier import RunningSandbox, RunResult, SandboxRecord, Stdio

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import Cgroup, CgroupHost

CGROUP_BASE = "clawpen"
NO_STDIO = Stdio()


def container_name(cgroup_name: str) -> str:
    """``clawpen-<bot>-<replica>`` from the instance's cgroup name ``<scope><bot>.<replica>``."""
    bot, _, replica = cgroup_name.rpartition(".")
    return f"clawpen-{bot}-{replica}" if bot else f"clawpen-{cgroup_name}"


def host_nproc() -> int:
    """This process's RLIMIT_NPROC, at most the kernel's pid_max (what a Podman container gets)."""
    soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 1 << 22
    return pid_max if soft == resource.RLIM_INFINITY else min(soft, pid_max)


def podman_started(pid: int, cgroup: Cgroup, plan: Plan) -> int | None:
    """What Podman needs once its container runs (the bot's command has not started yet).

    Its monitor, conmon (the init's parent), lives in ``<cgroup parent>/conmon``: it is never the
    OOM killer's pick. On cgroup v1, Podman removes the container's own cgroup as soon as it
    ends, with the only count of its OOM kills (a v1 parent's ``oom_kill`` counts only its own),
    and its ``OOMKilled`` stays false: the memory limit is clawpen's cgroup's around the container
    instead of the engine's (see ``engine_memory`` in :func:`create.create_kwargs`), and the
    kernel's OOM notification on it is the verdict (the eventfd returned). The bot cannot run
    before the limit is set: the gate is still closed.
    """
    with contextlib.suppress(OSError):
        parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        if Path(f"/proc/{parent}/comm").read_text().strip() == "conmon":
            Path(f"/proc/{parent}/oom_score_adj").write_text("-1000")
    limits = plan.cgroup
    if cgroup.version != 1 or limits.memory_max is None:
        return None
    cgroup.apply(CgroupLimits(memory_max=limits.memory_max, swap_max=limits.swap_max))
    return oom_eventfd(cgroup)


def cpu_limit(cgroup: Cgroup, plan: Plan) -> None:
    """Put the plan's CPU quota on clawpen's cgroup around the container (the engine's cgroup
    parent ``clawpen/<bot>.<replica>``) rather than on the engine's own cgroup of the container:
    the quota of a parent holds for everything under it, and it is the cgroup the start-up
    allowance (:mod:`clawpen.daemon.startcpu`) changes while the bot runs. Called once the
    container runs, before the gate opens: the bot's command never runs without it. A cgroup
    without a cpu controller fails the start (SandboxError): the limit is never dropped."""
    limits = plan.cgroup
    if limits.cpu_quota_us is not None:
        cgroup.set_cpu_quota(limits.cpu_quota_us, limits.cpu_period_us)


def _replica(cgroup_name: str) -> int:
    tail = cgroup_name.rpartition(".")[2]
    return int(tail) if tail.isdigit() else 0


class ContainerTier:
    """The ``container`` tier (see the module's docs)."""

    name = "container"
    makes_netns = True

    def __init__(self, state: Path, *, cgroup_host: CgroupHost | None = None) -> None:
        self.state = state
        self.run_dir = state / "run"
        self._cgroups = cgroup_host
        self._clients: dict[str, tuple[docker.DockerClient, str]] = {}

    # ------------------------------------------------------------------ engine and cgroups
    def client(self, wanted: str = "auto") -> docker.DockerClient:
        """The engine's client (made once per engine choice); HostError when none answers."""
        return self.engine(wanted)[0]

    def engine(self, wanted: str = "auto") -> tuple[docker.DockerClient, str]:
        """The engine's client and name (``auto``: the one detected); HostError when none answers."""
        if wanted not in self._clients:
            from clawpen.container.engine import client, detect

            found = detect(wanted)  # type: ignore[arg-type]
            self._clients[wanted] = (client(found), found.name)
        return self._clients[wanted]

    def cgroup_host(self) -> CgroupHost:
        if self._cgroups is None:
            from clawpen.sandbox.cgroups import detect

            self._cgroups = detect(base=CGROUP_BASE)
        return self._cgroups

    def _cgroup(self, name: str) -> Cgroup:
        return self.cgroup_host().attach(name)

    # ------------------------------------------------------------------ the Tier protocol
    def run(
        self, plan: Plan, *, timeout: float | None = None, secrets: Mapping[str, bytes] = {}
    ) -> RunResult:
        raise SandboxError(
            "clawpen run does not run container bots",
            where="container tier",
            hint="declare the bot in clawpen.toml and start it with clawpen up",
        )

    def start(
        self,
        plan: Plan,
        *,
        cgroup_name: str | None = None,
        stdio: Stdio = NO_STDIO,
        status_fd: int | None = None,
        secrets: Mapping[str, bytes] = {},
        wire_net: Callable[[int], None] | None = None,
    ) -> RunningSandbox:
        if plan.container is None:
            raise SandboxError(
                f"{plan.bot} has no image", where="container tier", hint='set image = "name:tag"'
            )
        if plan.network == "link" and wire_net is None:
            raise SandboxError(
                f"{plan.bot} has a network link, but nothing wires it into its container",
                where="container: network",
                hint="run it under the daemon, which wires the link: clawpen up",
            )
        name = cgroup_name or f"{plan.bot}.0"
        api, engine = self.engine(plan.container.engine)
        busybox = static_busybox()
        ident = plan.identity
        if plan.workspace:
            from clawpen.sandbox.workspace import prepare_workspace

            prepare_workspace(plan.workspace, ident.uid, ident.gid, adopt=plan.workspace_adopt)
        podman_v1 = engine == "podman" and self.cgroup_host().version == 1  # see podman_started
        files = InstanceFiles(self.run_dir, name, ident.uid, ident.gid)
        values = {n: secrets[n] for n in secrets}
        files.make()
        out = err = None
        try:
            if stdio.stdout is not None and stdio.stderr is not None:
                out, err = files.hand_over(stdio.stdout), files.hand_over(stdio.stderr)
            secret_env = tuple(n for n in plan.secret_env if n in values)
            program = loader.write_program(files.dir, bpf_for(plan.seccomp, cache_dir(self.state)))
            host = create.HostFiles(
                busybox,
                str(files.gate),
                loader.loader(cache_dir(self.state)),
                program,
                out,
                err,
                bool(values),
            )
            kwargs = create.create_kwargs(
                plan,
                name=container_name(name),
                labels=create.labels(plan, _replica(name), str(self.state), name),
                files=host,
                cgroup_parent=f"/{CGROUP_BASE}/{name}",
                secret_env=secret_env,
                engine=engine,
                nproc=host_nproc() if engine == "podman" else 0,
                engine_memory=not podman_v1,
            )
        except BaseException:
            files.remove()
            raise
        return self._launch(
            api, plan, name, kwargs, files=files, secrets=values, wire_net=wire_net, engine=engine
        )

    def _missing_image(self, plan: Plan) -> HostError:
        assert plan.container is not None
        image = plan.container.image
        return HostError(
            f"image {image} is not on this host",
            where=f"bots.{plan.bot}.image",
            hint=f"clawpen image build {plan.bot}"
            if plan.container.built
            else f"build or load it (docker build -t {image} ..., docker load -i ...)",
        )

    def _create(self, api: docker.DockerClient, plan: Plan, kwargs: dict[str, Any]) -> Container:
        """Create the container (one round trip when all is well): a missing image is a HostError;
        a container of that name left by a run whose record was lost is removed first."""
        import docker.errors

        for attempt in (1, 2):
            try:
                return api.containers.create(**kwargs)
            except docker.errors.ImageNotFound:
                raise self._missing_image(plan) from None
            except docker.errors.APIError as err:
                # the name is taken: Docker says 409, Podman 500 "... is already in use"
                taken = err.status_code == 409 or "already in use" in str(err.explanation or "")
                if not taken or attempt == 2:
                    raise
                self._remove_stale(api, str(kwargs["name"]))
        raise AssertionError("unreachable")

    def _launch(
        self,
        api: docker.DockerClient,
        plan: Plan,
        name: str,
        kwargs: dict[str, Any],
        *,
        files: InstanceFiles,
        secrets: Mapping[str, bytes],
        wire_net: Callable[[int], None] | None,
        engine: str = "docker",
    ) -> ContainerSandbox:
        import docker.errors
        import requests

        container: Container | None = None
        try:
            container = self._create(api, plan, kwargs)
            container.start()
            container.reload()
            pid = int(container.attrs["State"]["Pid"] or 0)
            if pid <= 0:
                raise SandboxError(
                    f"the container of {plan.bot} ended at once",
                    where="container: start",
                    hint="check the image",
                )
            sandbox = ContainerSandbox(
                container, pid, self._cgroup(name), files, started_at=time.time(), uid=plan.identity.uid
            )
            cpu_limit(sandbox.cgroup, plan)
            if engine == "podman":
                sandbox.oom_fd = podman_started(pid, sandbox.cgroup, plan)
            if secrets:
                write_secrets(pid, secrets, plan.identity.uid, plan.identity.gid)
            if wire_net is not None:
                wire_net(pid)
            born = sandbox.record().pid_start
            files.open_gate(lambda: pid_start_time(pid) == born)
        except (docker.errors.DockerException, requests.RequestException) as err:
            self._discard(container, files, name)
            raise SandboxError(
                f"the engine cannot start {plan.bot}: {getattr(err, 'explanation', None) or err}",
                where="container: start",
                hint="check the image and the engine (docker info)",
            ) from None
        except BaseException:
            self._discard(container, files, name)
            raise
        return sandbox

    def _remove_stale(self, api: docker.DockerClient, name: str) -> None:
        """A container of this name left by an earlier run whose record was lost: remove it."""
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            old = api.containers.get(name)
            if old.labels.get(f"{create.LABEL}.state") != str(self.state):
                raise HostError(
                    f"a container named {name} exists and is not this clawpen's",
                    where="container engine",
                    hint=f"remove or rename it (docker rm -f {name})",
                )
            old.remove(force=True)

    def _discard(self, container: Container | None, files: InstanceFiles, name: str) -> None:
        import docker.errors

        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        files.remove()
        with contextlib.suppress(ClawpenError):
            remove_parent(self._cgroup(name))

    def adopt(self, record: SandboxRecord, *, status: Path, started_at: float) -> RunningSandbox | None:
        """The container an earlier daemon started, if it still runs as the same init process
        (looked up by its name on each engine that answers)."""
        import docker.errors

        if record.cgroup is None:
            return None
        from clawpen.container.engine import SOCKETS

        for engine in SOCKETS:
            try:
                container = self.client(engine).containers.get(container_name(record.cgroup))
            except (docker.errors.DockerException, OSError, HostError):
                continue
            if container.labels.get(f"{create.LABEL}.state") == str(self.state):
                return self._adopt(container, record, started_at, engine)
        return None

    def _adopt(
        self, container: Container, record: SandboxRecord, started_at: float, engine: str
    ) -> RunningSandbox | None:
        state = container.attrs.get("State") or {}
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid != record.pid or pid_start_time(pid) != record.pid_start:
            return None
        try:
            owner = os.stat(f"/proc/{pid}")
        except OSError:
            return None
        assert record.cgroup is not None
        files = InstanceFiles(self.run_dir, record.cgroup, owner.st_uid, owner.st_gid)
        cgroup = self._cgroup(record.cgroup)
        oom = oom_eventfd(cgroup) if engine == "podman" and cgroup.version == 1 else None
        return ContainerSandbox(
            container, pid, cgroup, files, started_at=started_at, uid=owner.st_uid, oom_fd=oom
        )
