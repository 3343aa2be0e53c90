#!/usr/bin/env python3
"""Snapshot, restore and rollback benchmarks (issue 15), each against its anchor in the same run.

Run as root (the daemon starts the bots as their own uids, in cgroups, and freezes them)::

    .venv/bin/python bench/snapshot_bench.py                       # 1 GiB, 5 rounds
    .venv/bin/python bench/snapshot_bench.py --size 128MiB --rounds 3 --json

A clawpen daemon runs on a fresh state folder (``CLAWPEN_HOME`` in a temporary folder, its own
uid range, like the integration tests); everything is removed at the end.

1. ``snapshot``  a workspace of ``--size`` (files of 1 MiB of random data, plus 200 small files)
   used by a running bot (a shell loop appending a line to ``appender.log`` every 0.1 s). Each
   round rewrites 1% of the 1 MiB files (new random data, the same bytes in both copies), then,
   interleaved (A B, B A, ...): ``clawpen snapshot create BOT --json`` (a fresh CLI, wall time),
   and the anchor: ``restic backup`` by hand with the same arguments clawpen passes (tags, host,
   ``.`` from inside the folder, ``--password-file`` from a 0600 file in a 0700 folder) on an
   identical copy of the workspace in a second repository. Both repositories got the same first
   full backup before. Also printed: the bot's freeze pause (``pause_s`` of the reply), restic's
   own ``total_duration`` on both sides, and ``cat`` of the changed files to /dev/null (page cache
   hot, nothing dropped: the time to read the changed data once).
2. ``restore``   the whole workspace: ``clawpen snapshot restore BOT --to DIR`` against
   ``restic restore ID --target DIR`` by hand, interleaved, a new folder each time.
3. ``rollback``  a bot serving HTTP (``python3 -m http.server`` in the sandbox, with an http
   health check every 0.1 s): ``clawpen rollback`` (the previous release) against ``clawpen up``
   of a spec changing the same field (both recreate the bot), alternating; wall time of the CLI,
   which returns once the recreated bot passes its health check (checked afterwards in ``ps``).

Prints p50/p90/min per measurement and the ratios (goals: snapshot <= 1.1x restic, pause <= the
time to read the changed files, restore and rollback reported). ``--json`` prints the figures as
JSON at the end. Exits 0 when both snapshot goals are met (1.1x; pause <= restic's own
``total_duration`` by hand, which scans every file and reads the changed ones), 1 when not, 2
when it cannot run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawpen.snapshots.runner import PASSWORD_SECRET
from clawpen.vault.store import Vault

ROOT = Path(__file__).resolve().parent.parent
CLAWPEN = str(ROOT / ".venv" / "bin" / "clawpen")
MIB = 1 << 20
TARGET_SNAPSHOT_RATIO = 1.1
SMALL_FILES = 200
PREFIX = f"csb{os.getpid() % 0xFFFF:04x}"  # cgroups are host-wide: bot names unique to this run
SNAP_BOT = f"{PREFIX}-ws"
WEB_BOT = f"{PREFIX}-web"
TAGS = ["--tag", "clawpen", "--tag", f"bot:{SNAP_BOT}"]  # what Repository.backup passes

SPEC = """
[bots.{snap}]
command = ["sh", "-c", "while :; do date +%s.%N >> /workspace/appender.log; sleep 0.1; done"]
workspace = "./ws"
workspace_adopt = true

[bots.{web}]
command = ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"{extra}]
health = {{ http = "http://127.0.0.1:8000/", interval = "0.1s", timeout = "1s", retries = 3 }}
restart = {{ stop_grace = "2s" }}
"""


class BenchError(Exception):
    """The benchmark cannot run (exit 2)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Stat:
    name: str
    values: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def p90(self) -> float:
        if not self.values:
            return float("nan")
        v = sorted(self.values)
        return v[min(len(v) - 1, round(0.9 * (len(v) - 1)))]

    @property
    def min(self) -> float:
        return min(self.values) if self.values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": len(self.values),
            "p50": self.p50,
            "p90": self.p90,
            "min": self.min,
            "values": self.values,
        }


class Report:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.ratios: list[dict[str, Any]] = []

    def table(self, key: str, title: str, stats: Sequence[Stat], unit: str = "ms") -> None:
        print(f"\n== {title}")
        width = max(len(s.name) for s in stats)
        print(f"  {'':<{width}}  {'n':>3}  {'p50 ' + unit:>10}  {'p90':>9}  {'min':>9}")
        for s in stats:
            print(f"  {s.name:<{width}}  {len(s.values):>3}  {s.p50:>10.1f}  {s.p90:>9.1f}  {s.min:>9.1f}")
        self.data[key] = {s.name: s.to_dict() for s in stats}
        sys.stdout.flush()

    def ratio(self, key: str, label: str, a: Stat, b: Stat, goal: float | None = None) -> bool:
        r50, r90 = a.p50 / b.p50, a.p90 / b.p90
        ok = goal is None or r50 <= goal
        verdict = "info" if goal is None else ("PASS" if ok else "FAIL")
        print(
            f"  {verdict}  {label}: {r50:.2f}x at p50, {r90:.2f}x at p90"
            + (f" (goal <= {goal:g}x)" if goal else "")
        )
        self.ratios.append({"key": key, "label": label, "p50": r50, "p90": r90, "goal": goal, "ok": ok})
        return ok


# ------------------------------------------------------------------------------------ helpers
def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 128MiB)")
    unit = (m.group(2) or "B").upper()[0]
    mult = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    size = int(float(m.group(1)) * mult)
    if size < 16 * MIB:
        raise argparse.ArgumentTypeError("--size must be at least 16MiB")
    return size


def timed(argv: Sequence[str], **kw: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)
    elapsed = (time.monotonic() - t0) * 1000
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])}... exited {done.returncode}: {done.stderr.strip()[-600:]}")
    return elapsed, done


def summary(out: str) -> dict[str, Any]:
    for line in out.splitlines():
        if line.startswith("{") and '"summary"' in line:
            return dict(json.loads(line))
    raise BenchError("restic backup printed no summary")


class Clawpen:
    def __init__(self, work: Path) -> None:
        self.home = work / "state"
        self.spec_dir = work / "spec"
        self.spec_dir.mkdir(mode=0o755)
        uid_base = 1_900_000_000 + 65_536 * (1 + (os.getpid() + 1500) % 3000)  # tests use pid % 3000
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env.update(
            CLAWPEN_HOME=str(self.home), CLAWPEN_UID_BASE=str(uid_base), PYTHONPYCACHEPREFIX=str(work / "pyc")
        )

    def run(self, *args: str, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess[str]]:
        return timed([CLAWPEN, *args], env=self.env, cwd=self.spec_dir, timeout=timeout)

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json")[1].stdout)

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.home / "daemon.pid").read_text())
        return None

    def shutdown(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(Exception):
            subprocess.run(
                [CLAWPEN, "down"], env=self.env, cwd=self.spec_dir, capture_output=True, timeout=60
            )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)


class Anchor:
    """restic by hand on the copy: a second repository, the password in a 0600 file (0700 folder)."""

    def __init__(self, work: Path) -> None:
        secret = work / "anchor-secret"
        secret.mkdir(mode=0o700)
        self.password = secret / "password"
        self.password.write_text(os.urandom(24).hex())
        self.password.chmod(0o600)
        self.repo = work / "anchor-repo"
        self.cache = work / "anchor-cache"
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.cache)}
        for k in ("LANG", "LC_ALL", "TMPDIR"):
            if k in os.environ:
                self.env[k] = os.environ[k]

    def restic(self, *args: str, cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
        argv = ["restic", "--repo", str(self.repo), "--password-file", str(self.password)]
        argv += ["--cache-dir", str(self.cache), "--quiet", *args]
        return timed(argv, env=self.env, cwd=cwd, stdin=subprocess.DEVNULL)

    def clone_keys(self, repo: Path) -> None:
        """An empty repository with ``repo``'s config (id, chunker) and key files (same KDF cost)."""
        self.repo.mkdir(mode=0o700)
        shutil.copy2(repo / "config", self.repo / "config")
        shutil.copytree(repo / "keys", self.repo / "keys")
        for sub in ("data", "index", "snapshots", "locks"):
            (self.repo / sub).mkdir(mode=0o700)

    def backup(self, folder: Path) -> tuple[float, dict[str, Any]]:
        ms, done = self.restic("backup", "--json", *TAGS, "--host", "clawpen", ".", cwd=folder)
        return ms, summary(done.stdout)


def make_workspace(ws: Path, size: int, rng: random.Random) -> list[Path]:
    ws.mkdir(mode=0o755)
    big = []
    for i in range(size // MIB):
        sub = ws / f"d{i // 64:03d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"f{i:05d}.bin"
        path.write_bytes(os.urandom(MIB))
        big.append(path)
    notes = ws / "notes"
    notes.mkdir()
    for i in range(SMALL_FILES):
        (notes / f"n{i:03d}.txt").write_text(f"note {i} {rng.random()}\n" * rng.randint(1, 40))
    return big


def wait_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise BenchError(f"{path} never appeared (is the bot running?)")
        time.sleep(0.1)


def host_facts() -> dict[str, str]:
    def out(*argv: str) -> str:
        with contextlib.suppress(OSError):
            done = subprocess.run(argv, capture_output=True, text=True)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        return "?"

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "restic": out("restic", "version"),
        "commit": out("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


# ------------------------------------------------------------------------------------ 1. snapshot
def bench_snapshot(
    rep: Report,
    cp: Clawpen,
    anchor: Anchor,
    ws: Path,
    copy: Path,
    big: list[Path],
    rounds: int,
    rng: random.Random,
) -> bool:
    log("first (full) backup on both sides")
    # One password for both repositories (the bench's, set in clawpen's vault before its repository
    # exists) and the anchor repository made from clawpen's config and key: restic calibrates the
    # key's scrypt cost at init (about 0.5 s, more or less with the load then), and every restic
    # run pays it once, so two independent inits would differ by that alone.
    # (`clawpen secrets set` refuses CLAWPEN_* names: the bench writes its own temporary vault)
    Vault(cp.home, environ=cp.env).set(PASSWORD_SECRET, anchor.password.read_bytes())
    full_cp, _ = cp.run("snapshot", "create", SNAP_BOT, "--json")  # restic init included
    anchor.clone_keys(cp.home / "snapshots" / "repo")
    full_anchor, _ = anchor.backup(copy)
    rep.data["snapshot_full_ms"] = {"clawpen": full_cp, "restic": full_anchor}
    print(
        f"  first full backup: clawpen {full_cp:.0f} ms (restic init included), "
        f"restic by hand {full_anchor:.0f} ms"
    )
    cli, hand = Stat("clawpen snapshot create (CLI wall)"), Stat("restic backup by hand (wall)")
    pause, dur_cp = Stat("  bot's freeze pause (pause_s)"), Stat("  restic total_duration, clawpen side")
    dur_anchor, cat = Stat("  restic total_duration, by hand"), Stat("cat of the changed files (cache hot)")
    outside = Stat("  clawpen: CLI wall - pause (CLI, request, reply)")
    startup_cp = Stat("  clawpen: pause - total_duration (restic start/end)")
    startup_hand = Stat("  by hand: wall - total_duration (restic start/end)")
    changed_n = max(1, len(big) // 100)
    for r in range(rounds):
        picked = rng.sample(range(len(big)), changed_n)
        for i in picked:
            data = os.urandom(MIB)
            big[i].write_bytes(data)
            (copy / big[i].relative_to(ws)).write_bytes(data)
        with open(copy / "appender.log", "a") as f:  # the bot appends there too
            f.write(f"{time.time()}\n")
        order = ("clawpen", "restic") if r % 2 == 0 else ("restic", "clawpen")
        for side in order:
            if side == "clawpen":
                ms, done = cp.run("snapshot", "create", SNAP_BOT, "--json")
                reply = json.loads(done.stdout)
                if not reply["frozen"]:
                    raise BenchError(f"the bot was not frozen: {reply}")
                cli.values.append(ms)
                pause.values.append(reply["pause_s"] * 1000)
                dur_cp.values.append(reply["duration_s"] * 1000)
                outside.values.append(ms - pause.values[-1])
                startup_cp.values.append(pause.values[-1] - dur_cp.values[-1])
            else:
                ms, summ = anchor.backup(copy)
                hand.values.append(ms)
                dur_anchor.values.append(float(summ["total_duration"]) * 1000)
                startup_hand.values.append(ms - dur_anchor.values[-1])
        t0 = time.monotonic()
        subprocess.run(["cat", *(str(big[i]) for i in picked)], stdout=subprocess.DEVNULL, check=True)
        cat.values.append((time.monotonic() - t0) * 1000)
        log(f"snapshot {r + 1}/{rounds}: clawpen {cli.values[-1]:.0f} ms, restic {hand.values[-1]:.0f} ms")
    rep.table(
        "snapshot",
        f"1. Incremental snapshot, {len(big)} MiB + {SMALL_FILES} small files, {changed_n} files "
        f"({changed_n} MiB) changed per round",
        [cli, hand, pause, dur_cp, dur_anchor, outside, startup_cp, startup_hand, cat],
    )
    ok = rep.ratio(
        "snapshot", "clawpen snapshot create / restic backup by hand", cli, hand, TARGET_SNAPSHOT_RATIO
    )
    ok &= rep.ratio(
        "pause_vs_restic", "freeze pause / restic's total_duration by hand", pause, dur_anchor, 1.0
    )
    rep.ratio("pause_vs_cat", "freeze pause / cat of the changed files", pause, cat)
    return ok


# ------------------------------------------------------------------------------------ 2. restore
def bench_restore(rep: Report, cp: Clawpen, anchor: Anchor, work: Path, rounds: int) -> None:
    snaps = anchor.restic("snapshots", "--json", "--tag", f"bot:{SNAP_BOT}")[1].stdout
    anchor_id = sorted(json.loads(snaps), key=lambda s: s["time"])[-1]["id"]
    cli, hand = Stat("clawpen snapshot restore --to (CLI wall)"), Stat("restic restore by hand (wall)")
    targets = work / "restores"
    targets.mkdir(mode=0o755)
    for r in range(rounds):
        order = ("clawpen", "restic") if r % 2 == 0 else ("restic", "clawpen")
        for side in order:
            target = targets / f"{side}-{r}"
            if side == "clawpen":
                ms, _ = cp.run("snapshot", "restore", SNAP_BOT, "--to", str(target), "--json")
                cli.values.append(ms)
            else:
                ms, _ = anchor.restic("restore", anchor_id, "--target", str(target))
                hand.values.append(ms)
            shutil.rmtree(target)
        log(f"restore {r + 1}/{rounds}: clawpen {cli.values[-1]:.0f} ms, restic {hand.values[-1]:.0f} ms")
    rep.table("restore", "2. Restore of the whole workspace into a new folder", [cli, hand])
    rep.ratio("restore", "clawpen snapshot restore / restic restore by hand", cli, hand)


# ------------------------------------------------------------------------------------ 3. rollback
def bench_rollback(rep: Report, cp: Clawpen, rounds: int) -> None:
    spec = cp.spec_dir / "clawpen.toml"
    versions = ["", ', "--directory", "/"']
    up, back = Stat("clawpen up of a changed spec -> healthy"), Stat("clawpen rollback -> healthy")

    def healthy() -> None:
        row = next(r for r in cp.json("ps") if r["bot"] == WEB_BOT)
        if row.get("health") != "healthy":
            raise BenchError(f"{WEB_BOT} is not healthy after the command returned: {row}")

    def apply(version: int) -> float:
        spec.write_text(SPEC.format(snap=SNAP_BOT, web=WEB_BOT, extra=versions[version]))
        ms, _ = cp.run("up")
        healthy()
        return ms

    current = 0  # main() applied version 0
    for r in range(rounds + 1):  # the first round is a warm-up
        # rollback goes back to `base`, up goes to the other version; both directions alternate
        base = r % 2
        if current != base:
            apply(base)  # not timed: so that the rollback target alternates too
        ms_up = apply(1 - base)
        ms_back, _ = cp.run("rollback")
        healthy()
        current = base
        if r:
            up.values.append(ms_up)
            back.values.append(ms_back)
            log(f"rollback round {r}/{rounds}: up {ms_up:.0f} ms, rollback {ms_back:.0f} ms")
    rep.table("rollback", f"3. Recreate a running bot with an http health check ({WEB_BOT})", [back, up])
    rep.ratio("rollback", "clawpen rollback / clawpen up of the same change", back, up)


# ------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="workspace size (default 1GiB)")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds of each (default 5)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    ap.add_argument(
        "--only", action="append", choices=["snapshot", "restore", "rollback"], help="run only these"
    )
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("snapshot_bench: run as root (bots run as their own uids, in cgroups)", file=sys.stderr)
        return 2
    if shutil.which("restic") is None:
        print("snapshot_bench: restic is not installed (apt-get install restic)", file=sys.stderr)
        return 2
    only = set(args.only or ["snapshot", "restore", "rollback"])
    if "restore" in only:
        only.add("snapshot")  # restores need the snapshots

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(args.seed)
    rep = Report()
    work = Path(tempfile.mkdtemp(prefix="clawpen-snapshot-bench-", dir="/tmp"))
    work.chmod(0o711)
    cp = Clawpen(work)
    code = 0
    try:
        facts = host_facts()
        print("host: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
        rep.data["host"] = facts
        ws, copy = cp.spec_dir / "ws", work / "anchor-ws"
        big: list[Path] = []
        if "snapshot" in only:
            log(f"writing the workspace ({args.size // MIB} MiB) and its copy")
            big = make_workspace(ws, args.size, rng)
            shutil.copytree(ws, copy)
        else:
            ws.mkdir(mode=0o755)
        (cp.spec_dir / "clawpen.toml").write_text(SPEC.format(snap=SNAP_BOT, web=WEB_BOT, extra=""))
        cp.run("up")
        if copy.exists():
            wait_file(ws / "appender.log")
            shutil.copy2(ws / "appender.log", copy / "appender.log")
        ok = True
        if "snapshot" in only:
            ok = bench_snapshot(rep, cp, anchor := Anchor(work), ws, copy, big, args.rounds, rng)
            if "restore" in only:
                bench_restore(rep, cp, anchor, work, args.rounds)
        if "rollback" in only:
            bench_rollback(rep, cp, args.rounds)
        code = 0 if ok else 1
    except (BenchError, subprocess.TimeoutExpired) as err:
        print(f"snapshot_bench: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("snapshot_bench: interrupted; cleaning up", file=sys.stderr)
        code = 2
    finally:
        log("cleaning up")
        cp.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"ratios": rep.ratios, **rep.data}, indent=1, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
