"""The container tier's pure parts: the spec's image/engine fields and what the tier cannot
honour, and the plan -> `docker create` arguments (hardened by default)."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest

from clawpen.container import create
from clawpen.container.handle import result_from_state
from clawpen.container.tier import container_name, host_nproc
from clawpen.daemon.store import policy_hash
from clawpen.errors import ClawpenError, PolicyError
from clawpen.plan.build import HostFacts, build_plan
from clawpen.plan.model import Identity, Mount, Plan
from clawpen.sandbox.seccomp import default_policy
from clawpen.spec.container import built_tag
from clawpen.spec.loader import parse_spec_text

IDENT = Identity("a", 1_900_000_123, 1_900_000_123)
FILES = create.HostFiles(
    "/bin/busybox",
    "/run/x/gate",
    "/var/cache/loader",
    "/run/x/seccomp.bpf",
    "/run/x/a.0.out",
    "/run/x/a.0.err",
    secrets=True,
)
HOSTILE = "$(touch /pwned); echo"


def plan_of(tmp_path: Path, body: str) -> Plan:
    spec = tmp_path / "clawpen.toml"
    spec.write_text("[bots.a]\n" + body)
    bot = parse_spec_text(spec.read_text(), spec).spec.bots["a"]
    return build_plan(bot.to_policy("a", str(tmp_path)), IDENT, HostFacts.probe(), default_policy())


def kwargs_of(plan: Plan, files: create.HostFiles = FILES) -> dict[str, Any]:
    return create.create_kwargs(
        plan, name="clawpen-a-0", labels={"clawpen.bot": "a"}, files=files, cgroup_parent="/clawpen/a.0"
    )


CONTAINER = f'tier = "container"\nimage = "clawpen-test-base:bookworm"\ncommand = ["sh", "-c", "{HOSTILE}"]\n'


def test_create_arguments_are_hardened_by_default(tmp_path: Path) -> None:
    kw = kwargs_of(
        plan_of(tmp_path, CONTAINER + '[bots.a.resources]\nmemory = "128M"\ncpus = 0.5\ntmp = "8M"\n')
    )
    assert kw["user"] == f"{IDENT.uid}:{IDENT.gid}" and kw["group_add"] == []
    assert kw["cap_drop"] == ["ALL"] and kw["security_opt"] == ["no-new-privileges"]
    assert kw["read_only"] is True and kw["privileged"] is False
    assert kw["network_mode"] == "none" and kw["ipc_mode"] == "private"
    assert "pid_mode" not in kw and "userns_mode" not in kw  # no host namespaces
    assert kw["restart_policy"] == {"Name": "no"} and kw["log_config"]["Type"] == "none"
    assert kw["init"] is True and kw["cgroup_parent"] == "/clawpen/a.0"
    assert kw["tmpfs"]["/tmp"] == f"rw,nosuid,nodev,size={8 << 20},mode=1777"
    secrets = f"rw,nosuid,nodev,noexec,size={4 << 20},mode=0500,uid={IDENT.uid},gid={IDENT.gid}"
    assert kw["tmpfs"]["/run/secrets"] == secrets
    assert kw["mem_limit"] == kw["memswap_limit"] == 128 << 20  # no swap
    assert kw["pids_limit"] == 256
    # the CPU quota is clawpen's, on the cgroup parent (where start_cpus changes it), not the engine's
    assert not {"cpu_quota", "cpu_period", "nano_cpus", "cpu_shares"} & set(kw)
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in kw["ulimits"]}
    assert limits["nofile"] == (1024, 1024) and limits["core"] == (0, 0) and limits["fsize"][0] == 10 << 30
    # the gate is a constant script; the bot's argv follows it as arguments, never spliced in
    assert kw["entrypoint"] == [create.BUSYBOX, "sh", "-c", create.GATE_SCRIPT_LOGS, "clawpen-gate"]
    assert kw["command"] == ["sh", "-c", HOSTILE] and HOSTILE not in create.GATE_SCRIPT_LOGS
    # without log pipes (none given) the script does not redirect
    plain = kwargs_of(plan_of(tmp_path, CONTAINER), FILES._replace(out=None, err=None, secrets=False))
    assert list(plain["tmpfs"]) == ["/tmp"]
    assert plain["entrypoint"][3] == create.GATE_SCRIPT and ">" not in create.GATE_SCRIPT


def test_the_workspace_is_the_only_writable_bind_and_the_host_system_stays_out(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    plan = plan_of(tmp_path, CONTAINER + 'workspace = "ws"\nfilesystem = { ro = ["data:/data"] }\n')
    binds = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in kwargs_of(plan)["mounts"]}
    writable = {t for t, (_, ro) in binds.items() if not ro}
    assert writable == {"/workspace", create.OUT, create.ERR}
    assert binds["/workspace"][0] == str(tmp_path / "ws")
    assert binds["/data"] == (str(tmp_path / "data"), True)
    assert "/run/secrets" not in binds  # a tmpfs of the container's own, which the tier fills
    assert binds[create.BUSYBOX] == ("/bin/busybox", True) and binds[create.GATE][1] is True
    assert not {"/usr", "/etc/passwd", "/bin", "/lib"} & set(binds)  # the image has its own


def test_the_engine_socket_and_root_are_refused(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, CONTAINER)
    sock = plan._replace(mounts=(*plan.mounts, Mount("ro", "/x", source="/run", pin=True)))
    with pytest.raises(PolicyError, match="engine's socket"):
        kwargs_of(sock)
    with pytest.raises(PolicyError, match="as root"):
        kwargs_of(plan._replace(identity=Identity("a", 0, 0)))
    assert kwargs_of(plan)["user"] != "0:0"  # the positive control


def test_image_is_required_with_the_container_tier_and_refused_without(tmp_path: Path) -> None:
    with pytest.raises(ClawpenError, match="needs an image"):
        plan_of(tmp_path, 'tier = "container"\ncommand = ["true"]\n')
    with pytest.raises(ClawpenError, match="image is set"):
        plan_of(tmp_path, 'image = "debian:12"\ncommand = ["true"]\n')
    with pytest.raises(ClawpenError, match="not an image reference"):
        plan_of(tmp_path, 'tier = "container"\nimage = "Bad Image"\ncommand = ["true"]\n')
    with pytest.raises(ClawpenError, match="image is set, but the bot runs in the vm tier"):
        plan_of(tmp_path, 'tier = "vm"\nimage = "debian:12"\ncommand = ["true"]\n')
    plan = plan_of(
        tmp_path, 'tier = "container"\nimage = "debian:12"\nengine = "podman"\ncommand = ["true"]\n'
    )
    assert plan.container is not None and (plan.container.image, plan.container.engine) == (
        "debian:12",
        "podman",
    )
    assert "user" not in plan.namespaces and "net" in plan.namespaces  # `exec` joins the engine's


def test_a_built_image_gets_a_tag_from_its_context_and_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "bot").mkdir()
    plan = plan_of(tmp_path, 'tier = "container"\nimage = { context = "bot" }\ncommand = ["true"]\n')
    assert plan.container is not None and plan.container.built
    assert plan.container.image == built_tag("a", str(tmp_path / "bot"), "Dockerfile")
    assert (
        plan.container.image.startswith("clawpen-a:") and len(plan.container.image) == len("clawpen-a:") + 12
    )
    assert built_tag("a", str(tmp_path / "bot"), "Dockerfile.dev") != plan.container.image
    with pytest.raises(ClawpenError, match="outside the build context"):
        plan_of(
            tmp_path,
            'tier = "container"\nimage = { context = "bot", dockerfile = "../x" }\ncommand = ["t"]\n',
        )


@pytest.mark.parametrize(
    ("extra", "field", "hint"),
    [
        ('filesystem = { rw = ["data"] }\n', "filesystem.rw", "workspace"),
        ("resources = { io_weight = 100 }\n", "resources.io_weight", "remove io_weight"),
    ],
)
def test_fields_the_container_tier_cannot_honour_are_plan_time_errors(
    tmp_path: Path, extra: str, field: str, hint: str
) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(PolicyError) as err:
        plan_of(tmp_path, CONTAINER + extra)
    assert err.value.where == f"bots.a.{field}" and hint in (err.value.hint or "")
    assert plan_of(tmp_path, 'command = ["true"]\n' + extra).container is None  # the sandbox tier takes it


def test_a_container_bot_with_egress_plans_its_link_and_resolves_at_the_gateway(tmp_path: Path) -> None:
    from clawpen.plan.model import NetLink

    link = NetLink("/state/netns/a.0", "10.213.0.6", "10.213.0.5", 30, "eth0")
    spec = tmp_path / "clawpen.toml"
    spec.write_text("[bots.a]\n" + CONTAINER + 'network = { egress = ["api.example.com:443"] }\n')
    bot = parse_spec_text(spec.read_text(), spec).spec.bots["a"]
    plan = build_plan(
        bot.to_policy("a", str(tmp_path)), IDENT, HostFacts.probe(), default_policy(), link=link
    )
    kw = kwargs_of(plan)
    assert plan.network == "link" and kw["network_mode"] == "none"  # the link is clawpen's, not the engine's
    assert kw["dns"] == ["10.213.0.5"]
    assert kw["environment"]["HTTPS_PROXY"] == "http://10.213.0.5:3128"
    assert "dns" not in kwargs_of(plan_of(tmp_path, CONTAINER))  # no link: the engine's default (no network)


def test_a_sandbox_bot_stores_no_container_fields(tmp_path: Path) -> None:
    spec = tmp_path / "clawpen.toml"
    spec.write_text('[bots.a]\ncommand = ["sleep", "300"]\nreplicas = 2\n')
    dumped = parse_spec_text(spec.read_text(), spec).spec.bots["a"].model_dump(mode="json", by_alias=True)
    assert "image" not in dumped and "engine" not in dumped and dumped["tier"] == "sandbox"
    # computed with clawpen at a018313 (tests/unit/test_release_plan.py) for this bot
    assert policy_hash({"spec": dumped, "base_dir": "/srv/bots"}) == "bd136503dffa3e3b"


def test_how_a_container_ended_comes_from_the_engines_state() -> None:
    start, end = "2026-12-01T10:00:00.5Z", "2026-12-01T10:00:02.75Z"
    ok = result_from_state({"ExitCode": 3, "StartedAt": start, "FinishedAt": end}, fallback_started=0)
    assert (ok.exit_code, ok.reason, ok.signal) == (3, "exited", None) and ok.duration_s == pytest.approx(
        2.25
    )
    killed = result_from_state({"ExitCode": 137, "StartedAt": start, "FinishedAt": end}, fallback_started=0)
    assert (killed.reason, killed.signal) == ("signaled", 9)
    oom = result_from_state({"ExitCode": 137, "OOMKilled": True}, fallback_started=0)
    assert oom.reason == "oom"
    # Podman on cgroup v1 says OOMKilled false: clawpen's own verdict (the kernel's notice) holds
    seen = result_from_state({"ExitCode": 137, "OOMKilled": False}, fallback_started=0, oom=True)
    assert seen.reason == "oom"
    lost = result_from_state({}, fallback_started=0)
    assert lost.exit_code == 255 and "lost" in lost.message


def test_container_names_follow_the_instance() -> None:
    assert container_name("app.0") == "clawpen-app-0"
    assert container_name("s1234abcd-app.3") == "clawpen-s1234abcd-app-3"


def test_podman_gets_the_same_limits_in_the_form_its_api_takes(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, CONTAINER + '[bots.a.resources]\nmemory = "128M"\n')
    docker = kwargs_of(plan)
    podman = create.create_kwargs(
        plan,
        name="clawpen-a-0",
        labels={"clawpen.bot": "a"},
        files=FILES,
        cgroup_parent="/clawpen/a.0",
        engine="podman",
        nproc=4096,
        engine_memory=False,
    )
    # its tmpfs knows no uid=/gid=: U makes /run/secrets the container user's (the bot's uid)
    assert podman["tmpfs"]["/run/secrets"] == f"rw,nosuid,nodev,noexec,size={4 << 20},mode=0500,U"
    assert "uid=" in docker["tmpfs"]["/run/secrets"]
    # rootful Podman would raise RLIMIT_NPROC past what a root without CAP_SYS_RESOURCE may
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in podman["ulimits"]}
    assert limits["nproc"] == (4096, 4096) and limits["nofile"] == (1024, 1024)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert 0 < host_nproc() <= min(pid_max, resource.getrlimit(resource.RLIMIT_NPROC)[0])
    assert "nproc" not in {u["Name"] for u in docker["ulimits"]}
    # the memory limit moves to clawpen's cgroup parent (the tier sets it there); the rest is Docker's
    assert "mem_limit" not in podman and docker["mem_limit"] == 128 << 20
    same = {k for k in docker if k not in ("tmpfs", "ulimits", "mem_limit", "memswap_limit")}
    assert {k: podman[k] for k in same} == {k: docker[k] for k in same}


def test_an_engine_socket_elsewhere_comes_from_its_clients_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clawpen.container.engine import detect, socket_of
    from clawpen.errors import HostError

    sock = tmp_path / "podman.sock"
    monkeypatch.setenv("CONTAINER_HOST", f"unix://{sock}")
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")  # not a unix socket: the default stays
    assert socket_of("podman") == str(sock) and socket_of("docker") == "/run/docker.sock"
    with pytest.raises(HostError, match="the podman engine is not running"):
        detect("podman")
    sock.touch()  # positive control: where the variable points, the engine is found
    assert detect("podman") == (("podman", str(sock)))
    # and a container bot may not mount that socket (nor its folder) either
    plan = plan_of(tmp_path, CONTAINER)
    for source in (str(sock), str(tmp_path)):
        bound = plan._replace(mounts=(*plan.mounts, Mount("ro", "/x", source=source, pin=True)))
        with pytest.raises(PolicyError, match="engine's socket"):
            kwargs_of(bound)


def test_a_container_bot_builds_in_the_sandbox_tier_and_binds_the_output_read_only(tmp_path: Path) -> None:
    from clawpen.daemon.build_steps import BUILD_TIER, BuildResult, step_policy, with_build

    body = CONTAINER + 'build = { steps = [["sh", "-c", "echo built > /opt/bot/x"]] }\n'
    spec = tmp_path / "clawpen.toml"
    spec.write_text("[bots.a]\n" + body)
    bot = parse_spec_text(spec.read_text(), spec).spec.bots["a"]
    # the steps: a sandbox-tier policy (the host's /usr), writing the output at build.mount
    staging, cache = tmp_path / "stage", tmp_path / "cache"
    steps = step_policy("a", bot, str(tmp_path), staging, cache)
    assert BUILD_TIER == "sandbox" and steps.container is None
    assert (str(staging), "/opt/bot") in steps.rw
    step_plan = build_plan(steps, IDENT, HostFacts.probe(), default_policy())
    assert step_plan.container is None and any(m.dest == "/usr" for m in step_plan.mounts)
    # the bot: still a container bot, its output a read-only bind at /opt/bot
    out = tmp_path / "out"
    out.mkdir()
    built = with_build(bot, BuildResult("a", "k", out, False, 0.0))
    plan = build_plan(built.to_policy("a", str(tmp_path)), IDENT, HostFacts.probe(), default_policy())
    assert plan.container is not None and plan.container.image == "clawpen-test-base:bookworm"
    binds = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in kwargs_of(plan)["mounts"]}
    assert binds["/opt/bot"] == (str(out), True)
    assert "/opt/bot" not in {m["Target"] for m in kwargs_of(plan_of(tmp_path, CONTAINER))["mounts"]}


def test_start_cpus_is_planned_for_a_container_bot(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, CONTAINER + "resources = { cpus = 0.5, start_cpus = 2 }\n")
    assert plan.container is not None and plan.cgroup.cpu_quota_us == 50_000  # the steady quota
    assert "cpu_quota" not in kwargs_of(plan)


def test_the_cpu_quota_goes_on_the_cgroup_around_the_container(tmp_path: Path) -> None:
    from clawpen.container.tier import cpu_limit
    from clawpen.errors import SandboxError
    from clawpen.sandbox.cgroups import Cgroup

    plan = plan_of(tmp_path, CONTAINER + "resources = { cpus = 0.25 }\n")
    folder = tmp_path / "cpu"
    folder.mkdir()
    for name in ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.max"):  # a cgroup's files exist
        (folder / name).write_text("")
    cpu_limit(Cgroup("a.0", 1, {"cpu": str(folder)}), plan)
    got = {f: (folder / f).read_text() for f in ("cpu.cfs_period_us", "cpu.cfs_quota_us")}
    assert got == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "25000"}
    cpu_limit(Cgroup("a.0", 2, {"cpu": str(folder)}), plan)
    assert (folder / "cpu.max").read_text() == "25000 100000"
    # no cpu controller: the start fails rather than running the bot without its limit
    with pytest.raises(SandboxError, match="no cpu controller"):
        cpu_limit(Cgroup("a.0", 1, {"memory": str(folder)}), plan)
