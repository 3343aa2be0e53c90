#!/usr/bin/env python3
"""The VM tier's speed and memory, side by side (issue 17, "Speed").

Run as root with QEMU (Debian's qemu-system-x86), bubblewrap and the test kernel (fetched once by
tests/integration/vm_env.py into /var/cache/clawpen-tests)::

    .venv/bin/python bench/vm_bench.py [--rounds 7] [--restarts 6] [--window 20] [--quick]
        [--parts boot,memory,restart]

1. ``boot``     boot to the bot's first log line. clawpen: ``clawpen run -f SPEC vmbench`` (the
   CLI as a user runs it: spec, plan, accelerator probe, initramfs, bubblewrap, cgroup, seccomp,
   QEMU as the bot's uid) of a ``tier = "vm"`` bot ``sh -c "echo ready; exit 0"``, timed from the
   call to the first byte on its stdout. Anchor: raw ``qemu-system-x86_64`` as root, no
   bubblewrap, cgroup or uid change, with the argv clawpen's layout gives (same kernel, machine,
   accelerator, memory, virtio devices, 9p root share, the same init and orders: built once
   from clawpen.vm.layout / clawpen.vm.initrd, the initramfs written to a file beforehand, the
   host's / as the read-only 9p root instead of the sandbox's tree), timed from the spawn to the
   first byte the guest writes on the stdout port, twice: in the bench's own (root) cpu cgroup,
   and "beside": in a cpu cgroup of its own under clawpen's ``clawpen/`` parent, no limit set
   (on cgroup v1 all bots share that parent's weight: on a host where other bots run, the fair
   anchor competes for the CPU as a bot does). Rounds rotate the three after a warm-up; median,
   p90, the time to the end (the guest powers off after the bot's exit) and QEMU's CPU seconds
   at the first line (the work done, whatever the load); then clawpen's own costs before QEMU
   starts, each alone. Goal <= 1.1x against the beside anchor.
2. ``memory``   an idle VM bot (``sleep 600``, 256M guest) against the same bot in the sandbox
   tier, both through a daemon of the bench's own: the cgroup's memory (``ps``: memory.current
   or v1's usage, page cache included) sampled over a window after settling, and QEMU's RSS.
3. ``restart``  crash -> restart through the daemon: a bot that prints ``vmb-s``, then ``vmb-e``
   and exits 1 at once, ``restart = "always"`` without backoff (50 ms, a streak's first every
   time). The figure: the host's log timestamp of one instance's ``vmb-e`` -> the next one's
   ``vmb-s`` (the daemon's timestamps: the guest's clock is not the host's). VM bot, then the
   same bot in the sandbox tier, in alternating blocks.

Under TCG (this machine: /dev/kvm aborts QEMU) the guest's CPU is emulated: a boot is seconds,
not the ~100 ms of a microVM on KVM. Exits 0 when the boot goal is met, 1 when not, 2 when the
bench cannot run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from container_common import CLAWPEN, BenchError, Clawpen, loadavg, log, rss_kb, wait_until
from vm_common import (  # bench/, next to this file
    Raw,
    bench_plan,
    beside_cgroup,
    cpu_seconds,
    first_byte,
    qemu_pids,
    raw_qemu,
    raw_spawn,
    rss_parts,
)
from vm_env import guest_kernel

from clawpen.vm import accel as accel_mod
from clawpen.vm import layout

TARGET = 1.1
BOOT_SH = "echo ready; exit 0"
IDLE_SH = "echo ready; exec sleep 600"
CRASH_SH = "echo vmb-s; echo vmb-e; exit 1"
FAST_RESTART = (
    'restart = { policy = "always", backoff_initial = "50ms", backoff_max = "50ms", '
    'window = "100ms", max_restarts = 10000 }'
)
MEMORY = "256M"
MIB = 1 << 20


def bot_toml(name: str, tier: str, script: str, *extra: str) -> str:
    lines = [f"[bots.{name}]", f'tier = "{tier}"']
    if tier == "vm":
        lines.append(f'vm = {{ kernel = "{guest_kernel()}", memory = "{MEMORY}" }}')
    lines.append("command = " + json.dumps(["/bin/sh", "-c", script]))
    return "\n".join([*lines, *extra]) + "\n\n"


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[8] if len(xs) > 1 else xs[0]


def median_p90(xs: list[float]) -> str:
    return f"p50 {statistics.median(xs):6.2f} s  p90 {p90(xs):6.2f} s"


# ------------------------------------------------------------------------------------ 1. boot
class Boot(NamedTuple):
    first: float  # seconds to the bot's first stdout byte
    end: float  # seconds to the end (the guest powers off after the bot's exit)
    cpu: float  # QEMU's CPU seconds (all threads) at the first byte: the work, whatever the load


def raw_boot(raw: Raw) -> Boot:
    """Seconds to the guest's first stdout byte and to QEMU's end."""
    start = time.perf_counter()
    proc, r = raw_spawn(raw)
    try:
        first_byte(r)
        first = time.perf_counter() - start
        cpu = cpu_seconds(proc.pid)
        proc.wait(120)
        return Boot(first, time.perf_counter() - start, cpu)
    finally:
        os.close(r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def clawpen_boot(spec: Path, env: dict[str, str], bot: str = "vmbench") -> Boot:
    """Seconds from ``clawpen run`` to the bot's first stdout byte and to clawpen's end."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [CLAWPEN, "run", "-f", str(spec), bot],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            cwd=spec.parent,
        )
        assert proc.stdout is not None
        try:
            with contextlib.suppress(BenchError):
                first_byte(proc.stdout.fileno())
                first = time.perf_counter() - start
                cpu = cpu_seconds(next(iter(qemu_pids(proc.pid)), None))
                proc.stdout.read()
                if proc.wait(120) == 0:
                    return Boot(first, time.perf_counter() - start, cpu)
            errors.seek(0)
            raise BenchError(f"clawpen run failed: {errors.read().decode(errors='replace')[-400:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def bench_boot(work: Path, rounds: int) -> bool:
    spec = work / "boot" / "clawpen.toml"
    spec.parent.mkdir()
    spec.write_text(bot_toml("vmbench", "vm", BOOT_SH) + bot_toml("sbbench", "sandbox", BOOT_SH))
    state = work / "boot-state"
    env = {k: v for k, v in os.environ.items() if k != "CLAWPEN_HOME"}
    env |= {"CLAWPEN_HOME": str(state), "PYTHONPYCACHEPREFIX": str(work / "pycache")}
    raw = raw_qemu(bench_plan(spec, "vmbench", state), work, "boot")
    log(f"boot: warm-up (load {loadavg()})")
    clawpen_boot(spec, env)  # builds the init, caches the initramfs' shared part; makes clawpen's cgroup
    cg = beside_cgroup()
    arms: dict[str, Callable[[], Boot]] = {"clawpen run (vm tier)": lambda: clawpen_boot(spec, env)}
    if cg is not None:
        arms["raw QEMU, cgroup beside"] = lambda: raw_boot(raw._replace(cgroup=cg))
    arms["raw QEMU, root cgroup"] = lambda: raw_boot(raw)
    try:
        raw_boot(raw)
        times: dict[str, list[Boot]] = {k: [] for k in arms}
        loads = [loadavg()]
        for i in range(rounds):
            order = list(arms)[i % len(arms) :] + list(arms)[: i % len(arms)]  # each arm first in turn
            for label in order:
                times[label].append(arms[label]())
            log(
                f"boot: round {i + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1].first:.2f} s" for k, v in times.items())
            )
            loads.append(loadavg())
    finally:
        if cg is not None:
            with contextlib.suppress(OSError):
                cg.rmdir()
    ours = times["clawpen run (vm tier)"]
    anchor = "raw QEMU, cgroup beside" if cg is not None else "raw QEMU, root cgroup"
    theirs = times[anchor]
    ratio = statistics.median(o.first for o in ours) / statistics.median(t.first for t in theirs)
    accel = accel_mod.probe()
    print(f"\n1. boot to the bot's first log line, {rounds} rounds rotated, guest {MEMORY}, -smp 1")
    print(f"   accelerator: {accel.name.upper()} ({accel.reason})")
    for label, xs in times.items():
        firsts, ends = [x.first for x in xs], [x.end for x in xs]
        cpus = [x.cpu for x in xs if x.cpu == x.cpu]
        cpu = f"{statistics.median(cpus):5.2f} s" if cpus else "   -"
        print(f"   {label:<24} first line {median_p90(firsts)}  end {median_p90(ends)}  QEMU CPU p50 {cpu}")
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"   ratio (p50, first line, against {anchor}) {ratio:.2f}x (goal <= {TARGET}x): {verdict}")
    diff = statistics.median(o.first for o in ours) - statistics.median(t.first for t in theirs)
    print(f"   clawpen - raw (p50 - p50): {diff:+.2f} s")
    print(f"   load average during the rounds: {', '.join(loads[:1] + loads[-1:])}")
    fixed_costs(spec, env, work, rounds)
    return ratio <= TARGET


def fixed_costs(spec: Path, env: dict[str, str], work: Path, n: int) -> None:
    """What ``clawpen run`` of a VM bot adds before QEMU starts, each part timed alone (p50 of
    ``n``): the CLI with a sandbox-tier bot (spec, plan, bubblewrap, cgroup, seccomp: the same
    bot's first line), the accelerator probe and the TSC measurement (both once per ``clawpen
    run``; the daemon keeps them for its lifetime)."""
    sandbox = [clawpen_boot(spec, env, "sbbench").first for _ in range(n)]
    probes, tscs = [], []
    tsc = next((work / "raw-cache").glob("clawpen-tsc-*"), None)
    for _ in range(n):
        start = time.perf_counter()
        accel_mod.probe()
        probes.append(time.perf_counter() - start)
        if tsc is not None:
            start = time.perf_counter()
            accel_mod.tsc_khz(str(tsc))
            tscs.append(time.perf_counter() - start)
    total = statistics.median(sandbox) + statistics.median(probes) + (statistics.median(tscs) if tscs else 0)
    print(f"   clawpen's own costs, each alone (p50 of {n}):")
    rows = [("clawpen run, same bot, sandbox tier (CLI, plan, bwrap)", sandbox)]
    rows += [("accelerator probe (QEMU on /dev/kvm)", probes), ("TSC rate measurement (TCG only)", tscs)]
    for label, xs in rows:
        if xs:
            print(f"     {label:<56} {statistics.median(xs):.3f} s")
    print(f"     sum: {total:.2f} s before QEMU's own start")


# ------------------------------------------------------------------------------------ 2. memory
def log_lines(cp: Clawpen, bot: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cp.cli("logs", "--json", bot).splitlines() if line.strip()]


def bench_memory(cp: Clawpen, work: Path, window: float, settle: float) -> None:
    spec = cp.spec_dir / "idle.toml"
    spec.write_text(bot_toml("vmidle", "vm", IDLE_SH) + bot_toml("sbidle", "sandbox", IDLE_SH))
    plan = bench_plan(spec, "vmidle", cp.state)
    guest_ram = plan.vm.memory if plan.vm is not None else 0
    raw = raw_qemu(plan, work, "idle")
    cp.cli("up", "--detach", "-f", str(spec), timeout=300)

    def ready() -> bool:
        return all(any("ready" in x["text"] for x in log_lines(cp, b)) for b in ("vmidle", "sbidle"))

    wait_until(ready, 180, "the idle bots' first lines", 1)
    proc, r = raw_spawn(raw)  # the anchor: the same guest under raw QEMU, at the same time
    try:
        first_byte(r)
        log(f"memory: the bots and raw QEMU ready; {settle:g} s settling, {window:g} s window")
        time.sleep(settle)
        mem: dict[str, list[int]] = {"vmidle": [], "sbidle": []}
        rss: list[int] = []
        raw_rss: list[int] = []
        parts: list[tuple[int, int]] = []
        end = time.monotonic() + window
        while time.monotonic() < end:
            rows = {r["bot"]: r for r in cp.call("ps")}
            for bot, samples in mem.items():
                if rows[bot].get("memory_bytes") is not None:
                    samples.append(rows[bot]["memory_bytes"])
            qemus = qemu_pids(rows["vmidle"]["pid"])
            rss.append(sum(rss_kb(p) for p in qemus) * 1024)
            parts.append(rss_parts(qemus[0], guest_ram) if qemus else (0, 0))
            raw_rss.append(rss_kb(proc.pid) * 1024)
            time.sleep(1)
    finally:
        os.close(r)
        proc.kill()
        proc.wait()
    cp.cli("down", timeout=180)
    vm_mem, sb_mem = statistics.median(mem["vmidle"]), statistics.median(mem["sbidle"])
    q, rq = statistics.median(rss), statistics.median(raw_rss)
    print(f"\n2. memory of an idle bot (sh; sleep 600), median of {len(rss)} samples over {window:g} s")
    print(f"   sandbox tier:  cgroup {sb_mem / MIB:7.1f} MiB")
    print(
        f"   vm tier:       cgroup {vm_mem / MIB:7.1f} MiB, QEMU RSS {q / MIB:7.1f} MiB (guest RAM {MEMORY})"
    )
    print(f"   raw QEMU:                          QEMU RSS {rq / MIB:7.1f} MiB (the same guest, as root)")
    guest, tcg = statistics.median(p[0] for p in parts), statistics.median(p[1] for p in parts)
    print(
        f"   of clawpen's QEMU RSS: guest RAM touched {guest / MIB:.1f} MiB, TCG translation cache"
        f" {tcg / MIB:.1f} MiB, QEMU itself {(q - guest - tcg) / MIB:.1f} MiB"
    )
    print(f"   VM overhead:   {(vm_mem - sb_mem) / MIB:7.1f} MiB per bot (cgroup, vm - sandbox)")
    print(f"   QEMU RSS, clawpen / raw: {q / max(rq, 1):.2f}x")


# ------------------------------------------------------------------------------------ 3. restart
def stamp(entry: dict[str, Any]) -> float:
    return float(entry["ts"])


def bench_restart(cp: Clawpen, n: int, block: int) -> None:
    spec = cp.spec_dir / "crash.toml"
    spec.write_text(
        bot_toml("vmcrash", "vm", CRASH_SH, FAST_RESTART)
        + bot_toml("sbcrash", "sandbox", CRASH_SH, FAST_RESTART)
    )
    results: dict[str, list[Gap]] = {"vmcrash": [], "sbcrash": []}
    started: set[str] = set()
    while any(len(v) < n for v in results.values()):
        for bot, got in results.items():
            if len(got) >= n:
                continue
            want = min(block, n - len(got))
            if bot in started:
                cp.cli("start", bot)
            else:
                cp.cli("up", "--detach", "-f", str(spec), bot)
                started.add(bot)
            target = len(got) + want

            def enough(bot: str = bot, target: int = target) -> bool:
                return len(block_gaps(cp, bot)) >= target

            wait_until(enough, 60 + want * 30, f"{bot} restarts", 1)
            cp.cli("stop", bot, timeout=120)
            results[bot] = block_gaps(cp, bot)[:n]
            log(f"restart: {bot}: {len(results[bot])} restarts")
    cp.cli("down", timeout=180)
    print(
        f"\n3. crash -> restart: a bot's last line (then exit 1) -> its next instance's first line, {n} each"
    )
    print("   (the daemon's log timestamps; restart always, 50 ms backoff)")
    for bot, label in (("vmcrash", "vm tier"), ("sbcrash", "sandbox tier")):
        gs = results[bot]
        print(f"   {label:<13} {median_p90([g.total for g in gs])}")
        print(
            f"     last line -> exited {statistics.median(g.exited - g.last for g in gs):6.2f} s,"
            f" -> running {statistics.median(g.running - g.exited for g in gs):6.2f} s,"
            f" -> first line {statistics.median(g.first - g.running for g in gs):6.2f} s (p50 each)"
        )
    ratio = statistics.median(g.total for g in results["vmcrash"]) / statistics.median(
        g.total for g in results["sbcrash"]
    )
    print(f"   ratio (p50) {ratio:.0f}x")


class Gap(NamedTuple):
    """One restart: the last line, the daemon's ``exited`` and next ``running``, the first line."""

    last: float
    exited: float
    running: float
    first: float

    @property
    def total(self) -> float:
        return self.first - self.last


def block_gaps(cp: Clawpen, bot: str) -> list[Gap]:
    """Each ``vmb-e`` -> next ``vmb-s`` with the daemon's ``exited`` and ``running`` events
    between them; a gap that spans a stop (a ``stopped`` event) is no restart."""
    events = [e for e in cp.call("events", bot=bot, limit=100_000) if e.get("to_state")]
    at = {k: [e["at"] for e in events if e["to_state"] == k] for k in ("stopped", "exited", "running")}
    marks = [
        (x["text"].strip(), stamp(x)) for x in log_lines(cp, bot) if x["text"].strip() in ("vmb-s", "vmb-e")
    ]
    out = []
    for (ka, a), (kb, b) in itertools.pairwise(marks):
        if (ka, kb) != ("vmb-e", "vmb-s") or any(a <= t <= b for t in at["stopped"]):
            continue
        exited = [t for t in at["exited"] if a <= t <= b]
        running = [t for t in at["running"] if a <= t <= b]
        if exited and running:
            out.append(Gap(a, exited[0], running[-1], b))
    return out


# ------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="boot rounds on each side")
    ap.add_argument("--restarts", type=int, default=6, help="restarts measured on each side")
    ap.add_argument("--block", type=int, default=3, help="restarts per alternated block")
    ap.add_argument("--window", type=float, default=20.0, help="memory: sampling window (s)")
    ap.add_argument("--settle", type=float, default=10.0, help="memory: wait after the bots are ready (s)")
    ap.add_argument("--parts", default="boot,memory,restart")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 3 restarts, a 5 s window")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.restarts, args.window, args.settle = 3, 3, 5.0, 5.0
    if os.geteuid() != 0 or not shutil.which(layout.QEMU) or not shutil.which("bwrap"):
        print("needs root, QEMU and bubblewrap", file=sys.stderr)
        return 2
    parts = set(args.parts.split(","))
    work = Path(tempfile.mkdtemp(prefix="clawpen-vmbench-"))
    os.chmod(work, 0o755)
    cp = Clawpen(work)

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    ok = True
    print(f"VM tier bench; load average at the start {loadavg()}; {os.cpu_count()} CPUs")
    try:
        if "boot" in parts:
            ok = bench_boot(work, args.rounds)
        if "memory" in parts:
            bench_memory(cp, work, args.window, args.settle)
        if "restart" in parts:
            bench_restart(cp, args.restarts, args.block)
        print(f"\nload average at the end {loadavg()}")
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 2
    finally:
        cp.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
