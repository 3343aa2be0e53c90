#!/usr/bin/env python3
"""clawpen's benchmarks: start-up split, end to end against Docker, CPU-bound overhead.

Run as root (cgroups, switching to the bot's uid, dockerd)::

    bash scripts/bench.sh                       # setup.sh, then this script
    .venv/bin/python bench/run_bench.py [--quick] [--json out.json] [--no-docker]

Each benchmark measures clawpen and its anchor side by side in one run, interleaved (ABAB),
after a warm-up, and prints p50/p90 and the ratio against the target of the issue:

1. ``startup``  ``clawpen run -- /bin/true`` split into CLI start (interpreter, imports, argument
   parsing), plan, sandbox and exit, in fresh processes; then ``NamespaceTier(state).run(plan)``
   in a loop in this process against raw bubblewrap given the very same argv (same uid, same
   memfds, no cgroup and no --block-fd/--info-fd). Target: sandbox <= 1.5x raw bwrap.
2. ``e2e``      ``clawpen run -- /bin/true`` (a fresh process each time, wall clock) against
   ``docker run --rm --network none clawpen-bench:latest /bin/true``. Target: >= 4x faster
   (issue 22).
   Starts a dockerd and builds the image from busybox-static when needed, and stops the
   dockerd it started.
3. ``cpu``      a fixed CPU-bound loop (C with gcc, else python3), timed by the program itself,
   bare and under ``clawpen run --cpus 2``, alternating. Target: median ratio <= 1.03.

Exits 0 when every target measured is met, 1 when one is missed, 2 when the benchmarks (or the
Docker comparison, unless --no-docker) cannot run.
Child Python processes get a bytecode cache under the bench's temporary folder
(PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE removed), as an installed clawpen would have.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "clawpen-bench:latest"
DOCKER_SOCK = "/var/run/docker.sock"

TARGET_SANDBOX_VS_BWRAP = 1.5  # clawpen sandbox set-up + teardown <= 1.5x raw bwrap
TARGET_E2E_VS_DOCKER = 4.0  # docker run / clawpen run >= 4 (issue 22)
TARGET_CPU_OVERHEAD = 1.03  # inside / bare <= 1.03

# Modules `clawpen run` imports lazily (cli.py imports them inside the command functions).
RUN_MODULES = (
    "clawpen.cli",
    "clawpen.cli_parser",
    "clawpen.paths",
    "clawpen.plan.build",
    "clawpen.sandbox.seccomp",
    "clawpen.sandbox.users",
    "clawpen.spec.policy",
    "clawpen.sandbox.namespace",
    "clawpen.sandbox.tier",
    "clawpen.sandbox.resolve",
)

# Runs in a fresh interpreter: the same work as `clawpen run -- /bin/true`, with timestamps on
# the system-wide monotonic clock so the parent can add interpreter start and exit around them.
PROBE = """
import time
t0 = time.monotonic()
import gc, importlib, json, sys
from clawpen import cli
gc.set_threshold(*getattr(cli, "_GC_CLI", gc.get_threshold()))  # as cli.entry() does
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
t1 = time.monotonic()
from clawpen import cli
from clawpen.sandbox.namespace import NamespaceTier
marks = {}
build_parser, tier_run = cli.build_parser, NamespaceTier.run
def timed_parser(*a):
    parser = build_parser(*a)
    parse = parser.parse_known_args  # parse_args calls it too
    def parse_known_args(*a, **k):
        ns = parse(*a, **k)
        marks["parsed"] = time.monotonic()
        return ns
    parser.parse_known_args = parse_known_args
    return parser
def timed_run(self, *a, **k):
    marks["tier0"] = time.monotonic()
    try:
        return tier_run(self, *a, **k)
    finally:
        marks["tier1"] = time.monotonic()
cli.build_parser = timed_parser
NamespaceTier.run = timed_run
before = set(sys.modules)
t2 = time.monotonic()
rc = cli.main(json.loads(sys.argv[2]))
t3 = time.monotonic()
print(json.dumps({"rc": rc, "t0": t0, "t1": t1, "t2": t2, "t3": t3, **marks,
                  "late_imports": sorted(set(sys.modules) - before)}))
sys.stdout.flush()
import os
os._exit(0)  # as cli.entry() leaves: flushed, no interpreter teardown
"""

CPU_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 100000000UL, s = 88172645463325252UL;
    struct timespec a, b, ca, cb;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ca);
    for (unsigned long i = 0; i < n; i++) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cb);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.9f %.9f %lu\n", (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9,
           (double)(cb.tv_sec - ca.tv_sec) + (cb.tv_nsec - ca.tv_nsec) / 1e9, s);
    return 0;
}
"""

CPU_PY = """
import sys, time
n = int(sys.argv[1]); s = 0
t, c = time.perf_counter(), time.process_time()
for i in range(n):
    s = (s * 1103515245 + i) & 0xFFFFFFFF
print(f"{time.perf_counter() - t:.9f} {time.process_time() - c:.9f} {s}")
"""


def log(msg: str) -> None:
    sys.stdout.flush()
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def now() -> float:
    return time.perf_counter()


def ms(seconds: float) -> float:
    return seconds * 1000.0


@dataclass
class Stat:
    """Samples (seconds) of one measured thing."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": len(self.samples),
            "p50_ms": round(ms(self.p50), 3),
            "p90_ms": round(ms(self.p90), 3),
            "min_ms": round(ms(min(self.samples)), 3),
        }


@dataclass
class Check:
    name: str
    ratio: float
    target: str
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ratio": round(self.ratio, 3), "target": self.target, "ok": self.ok}


@dataclass
class Report:
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # targets that could not be measured

    def table(self, section: str, stats: Sequence[Stat], note: str = "") -> None:
        print(f"\n== {section} ==" + (f"  ({note})" if note else ""))
        print(f"  {'':48} {'p50 ms':>9} {'p90 ms':>9} {'min ms':>9} {'n':>4}")
        for s in stats:
            print(
                f"  {s.name:48} {ms(s.p50):9.2f} {ms(s.p90):9.2f}",
                f"{ms(min(s.samples)):9.2f} {len(s.samples):4}",
            )
        self.sections.setdefault(section, {})["stats"] = [s.to_dict() for s in stats]

    def check(self, section: str, name: str, ratio: float, target: str, ok: bool) -> None:
        c = Check(name, ratio, target, ok)
        self.checks.append(c)
        self.sections.setdefault(section, {}).setdefault("checks", []).append(c.to_dict())
        print(f"  -> {name}: {ratio:.2f}x (target {target}) {'PASS' if ok else 'FAIL'}")

    def info(self, section: str, key: str, value: Any) -> None:
        self.sections.setdefault(section, {})[key] = value


# --------------------------------------------------------------------------- helpers


def run_quiet(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


def wall(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall-clock seconds of a fresh process; raises if it fails."""
    t = now()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = now() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


def interleave(n: int, warmup: int, *runners: Callable[[], float]) -> list[list[float]]:
    """Run the runners in turn, n times each after ``warmup`` rounds, flipping the order every round."""
    out: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    for i in range(warmup + n):
        for k in order if i % 2 == 0 else reversed(order):
            t = runners[k]()
            if i >= warmup:
                out[k].append(t)
    return out


def apt_install(*packages: str) -> bool:
    if not shutil.which("apt-get"):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {' '.join(packages)} with apt-get")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if run_quiet(cmd, env=env).returncode == 0:
        return True
    run_quiet(["apt-get", "update", "-q"], env=env)
    return run_quiet(cmd, env=env).returncode == 0


# --------------------------------------------------------------------------- 1. start-up split


def clawpen_bin() -> str:
    here = Path(sys.executable).parent / "clawpen"
    return str(here) if here.exists() else (shutil.which("clawpen") or "clawpen")


def probe_once(env: dict[str, str], argv: list[str]) -> tuple[dict[str, float], list[str]]:
    t_spawn = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(RUN_MODULES), json.dumps(argv)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    t_done = time.monotonic()
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"probe failed ({proc.returncode}): {proc.stderr[-800:]}")
    m = json.loads(lines[-1])
    if m["rc"] != 0:
        raise RuntimeError(f"clawpen run exited {m['rc']} in the probe: {proc.stderr[-800:]}")
    phases = {
        "interpreter start": m["t0"] - t_spawn,
        "imports": m["t1"] - m["t0"],
        "argument parsing": m.get("parsed", m["t2"]) - m["t2"],
        "plan (policy, uid, plan, command check)": m["tier0"] - m.get("parsed", m["t2"]),
        "sandbox (NamespaceTier.run)": m["tier1"] - m["tier0"],
        "report + exit (os._exit, as cli.entry)": t_done - m["tier1"],
        "total (fresh process)": t_done - t_spawn,
    }
    return phases, list(m.get("late_imports", []))


def bench_startup(rep: Report, n: int, warmup: int, env: dict[str, str]) -> None:
    from clawpen import cli
    from clawpen.paths import cache_dir, state_dir
    from clawpen.sandbox import seccomp
    from clawpen.sandbox.namespace import NamespaceTier

    section = "1. clawpen run -- /bin/true, split"
    argv = ["run", "--", "/bin/true"]

    # (a) fresh processes: where the wall clock of one `clawpen run` goes
    log("startup: fresh-process probe of `clawpen run -- /bin/true`")
    for _ in range(warmup):
        probe_once(env, argv)
    phases: dict[str, Stat] = {}
    late: set[str] = set()
    for _ in range(n):
        sample, imported = probe_once(env, argv)
        late.update(imported)
        for k, v in sample.items():
            phases.setdefault(k, Stat(k)).samples.append(v)
    bare = Stat("(python -c pass, for scale)")
    for _ in range(n):
        bare.samples.append(wall([sys.executable, "-c", "pass"], env))
    cli_start = Stat("= CLI start (interpreter + imports + parsing)")
    for i in range(n):
        cli_start.samples.append(
            sum(phases[k].samples[i] for k in ("interpreter start", "imports", "argument parsing"))
        )
    rep.table(section, [*phases.values(), cli_start, bare], "fresh process each time")
    rep.info(section, "imported_during_run", sorted(late))
    if late:
        print(f"  note: modules still imported inside the run: {', '.join(sorted(late))}")

    # (b) plan, warm, in this process
    parser = cli.build_parser()
    ns = parser.parse_args(argv)
    plan = cli._plan_from_args(ns)
    plan_warm = Stat("plan, warm (in-process loop)")
    for i in range(warmup + n * 5):
        t = now()
        plan = cli._plan_from_args(ns)
        cli._missing_command(plan)
        if i >= warmup:
            plan_warm.samples.append(now() - t)

    # (c) sandbox set-up + teardown: the library in a loop vs raw bwrap with the same argv
    log("startup: NamespaceTier.run vs raw bwrap (same argv), interleaved")
    state = state_dir()
    tier = NamespaceTier(state)

    def run_tier() -> float:
        t = now()
        result = tier.run(plan)
        elapsed = now() - t
        if result.exit_code != 0:
            raise RuntimeError(f"NamespaceTier.run failed: {result}")
        return elapsed

    with raw_bwrap(plan, seccomp.bpf_for(plan.seccomp, cache_dir(state))) as (run_raw, raw_argv):
        minimal = ["bwrap", "--ro-bind", "/", "/", "--unshare-user", "--unshare-pid", "/bin/true"]

        def run_minimal() -> float:
            return run_as(minimal, plan.identity.uid, plan.identity.gid, ())

        tier_s, raw_s, min_s = interleave(n * 2, warmup, run_tier, run_raw, run_minimal)
    tier_stat = Stat("clawpen: NamespaceTier(state).run(plan)", tier_s)
    raw_stat = Stat("anchor: raw bwrap, same argv, same uid", raw_s)
    min_stat = Stat("(minimal bwrap: --ro-bind / /, user+pid ns)", min_s)
    breakdown = tier_breakdown(tier, plan, n * 2, warmup)
    rep.table(section + " [in-process]", [plan_warm, tier_stat, raw_stat, min_stat, *breakdown])
    rep.info(section + " [in-process]", "raw_bwrap_argv", raw_argv)
    ratio = tier_stat.p50 / raw_stat.p50
    rep.check(
        section + " [in-process]",
        "sandbox set-up+teardown / raw bwrap (p50)",
        ratio,
        f"<= {TARGET_SANDBOX_VS_BWRAP}",
        ratio <= TARGET_SANDBOX_VS_BWRAP,
    )
    print(f"     clawpen's own overhead over raw bwrap: {ms(tier_stat.p50 - raw_stat.p50):.2f} ms (p50)")
    print(
        f"     (for scale: {tier_stat.p50 / min_stat.p50:.2f}x a minimal bwrap; clawpen's argv has "
        f"{sum(a.startswith('--') for a in raw_argv)} options, {raw_argv.count('--ro-bind')} --ro-bind, "
        f"{raw_argv.count('--ro-bind-data')} --ro-bind-data, {raw_argv.count('--tmpfs')} --tmpfs)"
    )
    rep.info(section + " [in-process]", "ratio_vs_minimal_bwrap", round(tier_stat.p50 / min_stat.p50, 3))


def run_as(argv: Sequence[str], uid: int, gid: int, fds: Sequence[int]) -> float:
    t = now()
    proc = subprocess.Popen(
        argv,
        user=uid,
        group=gid,
        extra_groups=[],
        pass_fds=tuple(fds),
        env={"PATH": "/usr/bin:/bin"},
        umask=0o022,
        process_group=0,
    )
    rc = proc.wait()
    elapsed = now() - t
    if rc != 0:
        raise RuntimeError(f"raw bwrap exited {rc}: {' '.join(argv)[:300]}")
    return elapsed


@contextlib.contextmanager
def raw_bwrap(plan: Any, bpf: bytes) -> Iterator[tuple[Callable[[], float], list[str]]]:
    """The anchor: bubblewrap started exactly as clawpen starts it (``--args`` memfd, seccomp and
    /etc memfds, pinned paths, same uid/gid, env, umask, process group) minus the cgroup and the
    --block-fd / --info-fd handshake. Memfds are rewound before each run (bwrap reads them)."""
    from clawpen.sandbox.bwrap import BwrapFds, bwrap_argv

    opened: list[int] = []

    def memfd(name: str, data: bytes) -> int:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.write(fd, data)
        opened.append(fd)
        return fd

    try:
        seccomp_fd = memfd("bench-seccomp", bpf)
        data = {m.dest: memfd("bench-file", m.data.encode()) for m in plan.mounts if m.kind == "data"}
        pinned = {}
        for m in plan.mounts:
            if m.pin and m.source:
                pinned[m.dest] = os.open(m.source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
                opened.append(pinned[m.dest])
        argv = bwrap_argv(plan, BwrapFds(seccomp=seccomp_fd, data=data, pinned=pinned))
        split = argv.index("--")
        args_fd = memfd("bench-args", b"".join(a.encode() + b"\0" for a in argv[1:split]))
        rewind = [seccomp_fd, args_fd, *data.values()]
        cmd = [argv[0], "--args", str(args_fd), *argv[split:]]

        def run() -> float:
            for fd in rewind:
                os.lseek(fd, 0, os.SEEK_SET)
            return run_as(cmd, plan.identity.uid, plan.identity.gid, opened)

        yield run, argv
    finally:
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)


def tier_breakdown(tier: Any, plan: Any, n: int, warmup: int) -> list[Stat]:
    """The tier's steps, timed through ``Sandbox``; skipped if that changed shape."""
    try:
        from clawpen.sandbox.namespace import Sandbox
        from clawpen.sandbox.tier import Stdio
    except ImportError:
        return []
    steps = {k: Stat(f"  step: {k}") for k in ("setup", "spawn", "wait", "teardown")}
    try:
        for i in range(warmup + n):
            run = Sandbox(tier, plan, cgroup_name=f"{plan.bot}-{os.getpid()}", stdio=Stdio())
            marks = [now()]
            try:
                run.setup()
                marks.append(now())
                run.spawn()
                marks.append(now())
                run.wait(None)
                marks.append(now())
            finally:
                run.teardown()
                marks.append(now())
            if i >= warmup and len(marks) == 5:
                for k, (a, b) in zip(steps, itertools.pairwise(marks), strict=True):
                    steps[k].samples.append(b - a)
    except (AttributeError, TypeError) as err:
        log(f"tier breakdown skipped ({err})")
        return []
    steps["setup"].name = "  setup: seccomp, memfds, cgroup create"
    steps["spawn"].name = "  spawn: bwrap up to child pid, cgroup join"
    steps["wait"].name = "  wait: command runs; exit status, cgroup stats"
    steps["teardown"].name = "  teardown: cgroup check, rmdir, close fds"
    return list(steps.values())


# --------------------------------------------------------------------------- 2. end to end vs Docker


class Docker:
    """A Docker engine to compare with: an existing one, or a dockerd this script starts."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.bin = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")
        self.version = ""

    def _ok(self) -> bool:
        if not self.bin:
            return False
        try:
            r = run_quiet([self.bin, "version", "--format", "{{.Server.Version}}"], timeout=15)
        except subprocess.TimeoutExpired:
            return False
        if r.returncode == 0:
            self.version = r.stdout.strip()
        return r.returncode == 0

    def start(self) -> str | None:
        """Make an engine available; ``None`` on success, else why not."""
        if self._ok():
            log(f"using the running Docker engine {self.version}")
            return None
        if os.geteuid() != 0:
            return "no Docker engine is running and starting one needs root"
        if not shutil.which("dockerd") and not apt_install("docker.io"):
            return "dockerd is not installed and apt-get install docker.io failed"
        if not self.bin:
            self.bin = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")
        if not self.bin:
            return "the docker client is not installed"
        for extra in ([], ["--iptables=false", "--bridge=none"]):
            logfile = self.workdir / "dockerd.log"
            log(f"starting dockerd {' '.join(extra)} (log: {logfile})".replace("  ", " "))
            with open(logfile, "ab") as out:
                self.proc = subprocess.Popen(
                    ["dockerd", "--host", f"unix://{DOCKER_SOCK}", *extra],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.proc.poll() is None:
                if os.path.exists(DOCKER_SOCK) and self._ok():
                    log(f"dockerd {self.version} is up (pid {self.proc.pid})")
                    return None
                time.sleep(0.25)
            self.stop()
        return f"dockerd did not come up; see {self.workdir / 'dockerd.log'}"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            log(f"stopping the dockerd this script started (pid {self.proc.pid})")
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def ensure_image(self) -> str | None:
        assert self.bin
        if run_quiet([self.bin, "image", "inspect", IMAGE]).returncode == 0:
            return None
        busybox = static_busybox()
        if busybox is None:
            return "no static busybox (apt-get install busybox-static failed)"
        log(f"building {IMAGE} by docker import of a rootfs with {busybox} (true, sh)")
        tar_path = self.workdir / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            for name in ("bin",):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            tar.add(busybox, "bin/busybox")
            for name in ("true", "sh"):
                info = tarfile.TarInfo(f"bin/{name}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        r = run_quiet([self.bin, "import", str(tar_path), IMAGE])
        return None if r.returncode == 0 else f"docker import failed: {r.stderr.strip()}"


def is_static(path: str) -> bool:
    """An ELF file with no PT_INTERP program header (no dynamic loader)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            phoff = int.from_bytes(head[32:40], "little")
            phentsize = int.from_bytes(head[54:56], "little")
            phnum = int.from_bytes(head[56:58], "little")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(int.from_bytes(table[i : i + 4], "little") != 3 for i in range(0, len(table), phentsize))


def static_busybox() -> str | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if is_static(path):
            return path
    if apt_install("busybox-static"):
        return next((p for p in ("/bin/busybox", "/usr/bin/busybox") if is_static(p)), None)
    return None


def bench_e2e(
    rep: Report, n: int, warmup: int, env: dict[str, str], docker: Docker | None, compare: str | None = None
) -> None:
    section = "2. end to end: clawpen run vs docker run"
    clawpen = [clawpen_bin(), "run", "--", "/bin/true"]
    reason = "--no-docker" if docker is None else docker.start() or docker.ensure_image()
    if docker is None or reason:
        log(f"e2e: Docker comparison skipped: {reason}")
        rep.info(section, "docker_skipped", reason)
        stats = interleave(n, warmup, lambda: wall(clawpen, env))
        rep.table(section, [Stat("clawpen run -- /bin/true", stats[0])])
        print(f"  -> no ratio: Docker comparison skipped ({reason})")
        if docker is not None:
            rep.skipped.append(f"docker run / clawpen run: {reason}")
        return
    assert docker.bin
    dock = [docker.bin, "run", "--rm", "--network", "none", IMAGE, "/bin/true"]
    log(f"e2e: {' '.join(clawpen)}  vs  {' '.join(dock)}, interleaved")
    runners = [lambda: wall(clawpen, env), lambda: wall(dock)]
    if compare:  # another clawpen source tree (an older commit), for a before/after figure
        other = {**env, "PYTHONPATH": compare, "PYTHONPYCACHEPREFIX": env["PYTHONPYCACHEPREFIX"] + "-other"}
        runners.append(lambda: wall(clawpen, other))
    cp_s, dk_s, *other_s = interleave(n, warmup, *runners)
    extra = [Stat(f"(clawpen run, {compare})", other_s[0])] if compare else []
    cp, dk = (
        Stat("clawpen run -- /bin/true", cp_s),
        Stat(f"docker run --rm --network none ({docker.version})", dk_s),
    )
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # What a developer here sees: the caller's environment keeps clawpen's .pyc from being written.
        caller = {k: v for k, v in env.items() if k != "PYTHONPYCACHEPREFIX"}
        caller["PYTHONDONTWRITEBYTECODE"] = os.environ["PYTHONDONTWRITEBYTECODE"]
        slow = interleave(max(3, n // 3), 1, lambda: wall(clawpen, caller))[0]
        extra.append(Stat("(clawpen run, PYTHONDONTWRITEBYTECODE as set)", slow))
    rep.table(section, [cp, dk, *extra], "fresh process each time, wall clock")
    rep.info(section, "docker_version", docker.version)
    rep.info(section, "docker_client", docker.bin)
    ratio = dk.p50 / cp.p50
    rep.check(
        section,
        "docker run / clawpen run (p50)",
        ratio,
        f">= {TARGET_E2E_VS_DOCKER}",
        ratio >= TARGET_E2E_VS_DOCKER,
    )
    if ratio < TARGET_E2E_VS_DOCKER:
        need = dk.p50 / TARGET_E2E_VS_DOCKER
        print(f"     to meet it clawpen run needs p50 <= {ms(need):.1f} ms ({ms(cp.p50 - need):.1f} ms less)")


# --------------------------------------------------------------------------- 3. CPU-bound overhead


def cpu_program(workdir: Path) -> tuple[list[str], str]:
    """argv prefix (iterations appended) runnable both bare and inside the sandbox, and its kind."""
    progdir = workdir / "cpu"
    progdir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(workdir, 0o755)
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc:
        src, exe = progdir / "spin.c", progdir / "spin"
        src.write_text(CPU_C)
        r = run_quiet([gcc, "-O2", "-o", str(exe), str(src)])
        if r.returncode == 0:
            exe.chmod(0o755)
            return [str(exe)], "C (gcc -O2, xorshift loop)"
        log(f"cpu: gcc failed, falling back to python3: {r.stderr.strip()[:200]}")
    script = progdir / "spin.py"
    script.write_text(CPU_PY)
    script.chmod(0o644)
    return ["/usr/bin/python3", str(script)], "python3 loop"


@dataclass(frozen=True)
class Loop:
    """One run of the CPU-bound program: its loop's wall and CPU time, and the whole command's wall."""

    wall: float
    cpu: float
    command: float


def loop_time(argv: Sequence[str], env: dict[str, str] | None = None) -> Loop:
    t = now()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = now() - t
    if r.returncode != 0 or len(r.stdout.split()) < 2:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr[-500:]}")
    loop_wall, loop_cpu = (float(x) for x in r.stdout.split()[:2])
    return Loop(loop_wall, loop_cpu, elapsed)


def bench_cpu(rep: Report, reps: int, seconds: float, env: dict[str, str], workdir: Path) -> None:
    section = "3. CPU-bound loop: bare vs clawpen run --cpus 2"
    prog, kind = cpu_program(workdir)
    progdir = str(Path(prog[-1]).parent)
    # calibrate the iteration count so that the bare loop takes about `seconds`
    iters = 2_000_000 if kind.startswith("python") else 50_000_000
    first = loop_time([*prog, str(iters)])
    iters = max(1, int(iters * seconds / max(first.cpu, 1e-4)))
    cpus = "2" if (os.cpu_count() or 1) >= 2 else "1"
    bare_cmd = [*prog, str(iters)]
    boxed_cmd = [clawpen_bin(), "run", "--cpus", cpus, "--ro", f"{progdir}:{progdir}", "--", *bare_cmd]
    log(f"cpu: {kind}, {iters} iterations (~{seconds:g} s bare), {reps} alternating pairs")
    bare: list[Loop] = []
    boxed: list[Loop] = []

    def keep(into: list[Loop], cmd: list[str], cmd_env: dict[str, str] | None) -> float:
        into.append(loop_time(cmd, cmd_env))
        return into[-1].wall

    interleave(reps, 1, lambda: keep(bare, bare_cmd, None), lambda: keep(boxed, boxed_cmd, env))
    bare, boxed = bare[1:], boxed[1:]  # drop the warm-up round
    ratios = [b.wall / a.wall for a, b in zip(bare, boxed, strict=True)]
    cpu_ratios = [b.cpu / a.cpu for a, b in zip(bare, boxed, strict=True)]
    inside = f"inside clawpen run --cpus {cpus}"
    stats = [
        Stat("loop wall time, bare", [x.wall for x in bare]),
        Stat(f"loop wall time, {inside}", [x.wall for x in boxed]),
        Stat("(loop CPU time, bare)", [x.cpu for x in bare]),
        Stat(f"(loop CPU time, {inside})", [x.cpu for x in boxed]),
        Stat("(whole command wall, bare)", [x.command for x in bare]),
        Stat("(whole command wall, clawpen run)", [x.command for x in boxed]),
    ]
    rep.table(section, stats, f"{kind}, self-timed loop")
    rep.info(section, "iterations", iters)
    rep.info(section, "pair_ratios_wall", [round(r, 4) for r in ratios])
    rep.info(section, "pair_ratios_cpu", [round(r, 4) for r in cpu_ratios])
    best = min(x.wall for x in boxed) / min(x.wall for x in bare)
    print(f"     per-pair wall ratios: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(
        f"     best-of-{len(bare)} wall ratio {best:.3f}, median CPU-time ratio "
        f"{statistics.median(cpu_ratios):.3f} (both insensitive to other load on the host)"
    )
    ratio = statistics.median(ratios)
    ok = ratio <= TARGET_CPU_OVERHEAD
    rep.check(
        section, "inside / bare loop wall time (median of pairs)", ratio, f"<= {TARGET_CPU_OVERHEAD}", ok
    )


# --------------------------------------------------------------------------- main


def git_state() -> str:
    """The commit measured, with the number of files changed on top of it (src/ is in flux)."""
    head = run_quiet(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = run_quiet(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"]).stdout.splitlines()
    return f"{head or 'unknown'}" + (f" + {len(dirty)} changed files in src/" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and a shorter CPU loop")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--no-docker", action="store_true", help="skip the Docker comparison")
    ap.add_argument(
        "--compare-src", metavar="DIR", help="e2e: also time `clawpen run` from this src/ folder (PYTHONPATH)"
    )
    ap.add_argument(
        "--only", choices=["startup", "e2e", "cpu"], action="append", help="run only these benchmarks"
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (cgroups, bot uids, dockerd): sudo bash scripts/bench.sh", file=sys.stderr)
        return 2
    try:
        import clawpen  # noqa: F401
    except ImportError:
        print(
            f"bench: clawpen is not importable from {sys.executable}; run scripts/bench.sh", file=sys.stderr
        )
        return 2
    only = set(args.only or ["startup", "e2e", "cpu"])
    n, warmup, cpu_reps, cpu_s = (10, 2, 5, 0.5) if args.quick else (30, 3, 9, 1.0)

    workdir = Path(tempfile.mkdtemp(prefix="clawpen-bench-"))
    os.environ["CLAWPEN_HOME"] = str(workdir / "state")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    rep = Report()
    uname = platform.uname()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": f"{uname.system} {uname.release} {uname.machine}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "bwrap": run_quiet(["bwrap", "--version"]).stdout.strip(),
        "clawpen": git_state(),
        "load_avg_at_start": os.getloadavg(),
        "quick": args.quick,
    }
    print(
        f"clawpen benchmarks — {meta['date']}, {meta['host']}, {meta['cpus']} CPUs, Python {meta['python']}, "
        f"{meta['bwrap']}, load {meta['load_avg_at_start'][0]:.2f}{' (quick)' if args.quick else ''}\n"
        f"clawpen {meta['clawpen']}"
    )
    docker = None if args.no_docker else Docker(workdir)
    started = time.monotonic()
    try:
        if "startup" in only:
            bench_startup(rep, n, warmup, env)
        if "e2e" in only:
            bench_e2e(rep, n, warmup, env, docker, args.compare_src)
        if "cpu" in only:
            bench_cpu(rep, cpu_reps, cpu_s, env, workdir)
    except Exception as err:  # a failed run, a SandboxError, a missing tool: say which and stop
        print(f"bench: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    finally:
        if docker is not None:
            docker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["load_avg_at_end"] = os.getloadavg()
    print(f"\n== summary ({meta['seconds']} s) ==")
    for c in rep.checks:
        print(f"  {'PASS' if c.ok else 'FAIL'}  {c.name}: {c.ratio:.2f}x (target {c.target})")
    for what in rep.skipped:
        print(f"  SKIP  {what}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "results": rep.sections}, indent=2) + "\n")
        log(f"wrote {out}")
    if not all(c.ok for c in rep.checks):
        return 1
    return 2 if rep.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
