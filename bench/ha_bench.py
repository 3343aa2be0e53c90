#!/usr/bin/env python3
"""Primary/backup failover under randomized faults (issue 18, "Figures"), with keepalived's VRRP
as the anchor. Run as root (namespaces, etcd-server, bubblewrap, keepalived)::

    .venv/bin/python bench/ha_bench.py [--runs 100] [--quick] [--seed N] [--vrrp-rounds 10]
        [--json FILE]

One simulated cluster for the whole bench (tests/integration/cluster_env.py): 3 etcd members in a
fabric namespace, hosts ``a`` and ``b`` (a namespace and a clawpen daemon each), one HA bot with
the issue's test config: lease 5 s, poll 200 ms, ``check = { http = "http://{address}:18099/",
interval = "1s", timeout = "500ms", failures = 2 }`` (the bot serves HTTP through a published
port). The bot appends "<host> <token> <token> <time>" to a shared file every 50 ms (ha_env.py).

Each run picks a fault (seeded) and applies it to the current primary:

  daemon-kill    SIGKILL of the primary's daemon (restarted once the backup serves)  failover
  daemon-stop    SIGSTOP of the primary's daemon (SIGCONT once the backup serves)    failover
  bot-stop       SIGSTOP of every process of the bot (the backup's check fails)      failover
  bot-kill       SIGKILL of every process of the bot: a local restart, same term     no failover
  partition      nftables drops all but loopback in the primary's namespace          failover
  etcd-member    SIGKILL of one etcd member (restarted after the window)             no failover
  short-split    a partition of the primary healed within 1 s                        no failover
  planned        `clawpen failover pen` on the backup                                failover

"to serving": the fault -> the first line of the new term (failover), or of the restarted bot
(bot-kill); for the other no-failover kinds, the longest gap between the primary's lines around
the fault. Overlaps: two terms' spans (first..last line) overlapping, over the whole bench's log
(ha_env.Terms, the tests' checker). After each run the fault is undone and the bench waits for
exactly one primary (running, writing) and one standby.

Exits 0 when every goal is met (p99 <= 7 s, 0 overlaps, every run as expected), 1 when not,
2 when the bench cannot run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from cluster_env import Cluster, SimHost, cluster  # noqa: E402
from ha_common import (  # noqa: E402  bench/, next to this file
    SYNC_PASSWORD,
    SYNC_SECRET,
    BenchError,
    Lines,
    bytes_lost,
    keep_bot,
    keepalived_missing,
    lines_of,
    log,
    pct,
    signal_bot,
    vrrp_pair,
    vrrp_round,
    wait_until,
)
from ha_env import Terms, spec  # noqa: E402
from helpers import NetnsDaemon  # noqa: E402

LEASE, CHECK_INTERVAL = 5.0, 1.0
GOAL = LEASE + 2 * CHECK_INTERVAL  # 7 s: "the lease + one check interval" with the slack
CHECK = 'check = { http = "http://{address}:18099/", interval = "1s", timeout = "500ms", failures = 2 }'
EXTRA = (
    'network = { publish = ["0.0.0.0:18099:8099"], expose = true }\n'
    "restart.max_restarts = 1000"  # the bench SIGKILLs the bot ~12 times: no crashloop state
)
KINDS: dict[str, bool] = {  # kind -> a failover is expected
    "daemon-kill": True,
    "daemon-stop": True,
    "bot-stop": True,
    "bot-kill": False,
    "partition": True,
    "etcd-member": False,
    "short-split": False,
    "planned": True,
}
QUIET_WINDOW = LEASE + 2.0  # how long a no-failover fault is watched
STEADY = 3.0  # seconds of one primary and one standby before the next fault


@dataclass
class Bench:
    c: Cluster
    d: dict[str, NetnsDaemon]
    lines: Lines
    text: str  # the spec both hosts run

    def host(self, name: str) -> SimHost:
        return self.c.hosts[name]

    def other(self, name: str) -> str:
        return "b" if name == "a" else "a"

    def states(self) -> dict[str, str]:
        out = {}
        for name, d in self.d.items():
            done = d.cli("ps", "--json", check=False, timeout=30)
            try:
                rows = json.loads(done.stdout)
                out[name] = next((r["state"] for r in rows if r["bot"] == "pen"), "?")
            except ValueError:
                out[name] = f"? ({done.stderr.strip()[-80:]})"
        return out

    def settle(self, timeout: float = 90) -> tuple[str, int]:
        """Wait for one primary (running, the only one writing) and one standby, steadily for
        STEADY seconds (a fault's aftermath, say a second step-down, is over)."""
        end = time.monotonic() + timeout
        states: dict[str, str] = {}
        serving: set[tuple[str, int]] = set()
        while time.monotonic() < end:
            serving = self.lines.serving(0.5)
            if len(serving) == 1:
                ((host, token),) = serving
                states = self.states()
                steady = states.get(host) == "running" and states.get(self.other(host)) == "standby"
                if steady:
                    since = time.time()
                    time.sleep(STEADY)
                    rows = {(r.host, r.token) for r in self.lines.since(since - 0.5)}
                    if rows == {(host, token)} and self.states() == states:
                        return host, token
                    continue
            time.sleep(0.3)
        raise BenchError(f"no steady primary/standby after {timeout:g}s: serving {serving}, ps {states}")


def first_new_term(b: Bench, t0: float, old: int, timeout: float) -> tuple[float, str, int] | None:
    found: list[tuple[float, str, int]] = []

    def new() -> bool:
        rows = [r for r in b.lines.since(t0 - 1) if r.token > old]
        if rows:
            r = min(rows, key=lambda r: r.at)
            found.append((r.at, r.host, r.token))
        return bool(rows)

    return found[0] if wait_until(new, timeout, 0.05) else None


def max_gap(b: Bench, host: str, token: int, start: float, end: float) -> float:
    at = [r.at for r in b.lines.since(start) if r.host == host and r.token == token and r.at <= end]
    pts = [start, *at, end]
    return max(y - x for x, y in itertools.pairwise(pts))


def one_run(b: Bench, kind: str, rnd: random.Random, prim: str, token: int) -> dict[str, Any]:
    back = b.other(prim)
    d, host = b.d[prim], b.host(prim)
    expect = KINDS[kind]
    res: dict[str, Any] = {"kind": kind, "primary": prim, "term": token, "expected_failover": expect}
    undo: Callable[[], None] = lambda: None  # noqa: E731
    t0 = time.time()
    try:
        if kind == "daemon-kill":
            pid = d.pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            def undo() -> None:
                if d.proc is not None:
                    with contextlib.suppress(Exception):
                        d.proc.wait(5)
                d.start()
                proc = d.proc
                # the killed daemon's socket file is still there: wait for the new daemon's pid
                if not wait_until(lambda: proc is not None and d.pid() == proc.pid, 20, 0.05):
                    raise BenchError(f"the restarted daemon of {prim} did not come up")
        elif kind == "daemon-stop":
            pid = d.pid()
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            undo = lambda: os.kill(pid, signal.SIGCONT)  # noqa: E731
        elif kind == "bot-stop":
            stopped = signal_bot(d.home, signal.SIGSTOP)
            res["pids"] = len(stopped)

            def undo() -> None:
                for p in stopped:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGCONT)
        elif kind == "bot-kill":
            res["pids"] = len(signal_bot(d.home, signal.SIGKILL, passes=2))
        elif kind == "partition":
            host.partition()
            undo = host.heal
        elif kind == "etcd-member":
            i = rnd.choice(b.c.etcd.running())
            res["member"], res["was_leader"] = i, b.c.etcd.leader() == i
            t0 = time.time()
            b.c.etcd.kill(i)

            def undo() -> None:
                b.c.etcd.restart(i)
                b.c.etcd.wait_healthy(30)
        elif kind == "short-split":
            held = rnd.uniform(0.3, 1.0)
            host.partition()
            time.sleep(held)
            host.heal()
            res["held"] = held
        elif kind == "planned":
            t0 = time.time()
            done = b.d[back].cli("failover", "pen", "--json", check=False, timeout=60)
            res["cli"] = round(time.time() - t0, 3)
            if done.returncode != 0:
                res["error"] = f"clawpen failover -> {done.returncode}: {done.stderr.strip()[-200:]}"
        # -- observe
        if expect:
            new = first_new_term(b, t0, token, 40)
            res["failover"] = new is not None
            if new is not None:
                res["to_serving"], res["new_primary"], res["new_term"] = new[0] - t0, new[1], new[2]
        else:
            watch_end = time.time() + QUIET_WINDOW
            if kind == "bot-kill":
                ok = wait_until(lambda: any(r.host == prim for r in b.lines.since(t0)), 30, 0.02)
                rows = [r for r in b.lines.since(t0) if r.host == prim]
                if ok and rows:
                    res["to_serving"] = rows[0].at - t0
                    res["same_term"] = rows[0].token == token
            while time.time() < watch_end:
                time.sleep(0.2)
            res["failover"] = any(r.token > token for r in b.lines.since(t0 - 1))
            if kind != "bot-kill":
                res["to_serving"] = max_gap(b, prim, token, t0, watch_end)
    finally:
        undo()
    res["as_expected"] = res["failover"] == expect and "error" not in res
    if kind == "bot-kill" and not res.get("same_term", False):
        res["as_expected"] = False
    res["settled"] = b.settle()
    # terms after the one the fault led to, before the cluster was steady again (a step-down
    # of the new term, say): not counted in "as expected", listed as aftershocks
    final = {token, res.get("new_term", token)}
    res["aftershocks"] = sorted({r.token for r in b.lines.since(t0 - 1) if r.token not in final})
    return res


@contextlib.contextmanager
def ha_cluster(work: Path) -> Iterator[Bench]:
    with ExitStack() as stack:
        c = stack.enter_context(cluster(work))
        shared = Path(tempfile.mkdtemp(prefix="shared-", dir=work))
        shared.chmod(0o777)
        (shared / "primary.log").touch()
        os.chmod(shared / "primary.log", 0o666)
        text = spec(
            c.etcd.endpoints,
            shared,
            lease=f"{LEASE:g}s",
            poll="200ms",
            ha_more=CHECK,
            extra=EXTRA,
            serve=8099,
        )
        d: dict[str, NetnsDaemon] = {}
        for name in ("a", "b"):
            h = c.hosts[name]
            env = {"CLAWPEN_CLUSTER_HOST": name, "CLAWPEN_CLUSTER_ADDRESS": h.address}
            d[name] = stack.enter_context(h.daemon(work / name, env=env, strict=False))
            d[name].write(text)
        stack.callback(lambda: [with_heal(h) for h in c.hosts.values()])
        d["a"].cli("up")
        d["a"].wait_state("pen", "running", timeout=60)
        d["b"].cli("up")
        d["b"].wait_state("pen", "standby", timeout=60)
        yield Bench(c, d, Lines(shared / "primary.log"), text)


def with_heal(h: SimHost) -> None:
    if h.partitioned:
        with contextlib.suppress(Exception):
            h.heal()


def summarize(runs: list[dict[str, Any]], overlaps: list[str]) -> dict[str, Any]:
    by: dict[str, Any] = {}
    for kind, expect in KINDS.items():
        mine = [r for r in runs if r["kind"] == kind]
        xs = [r["to_serving"] for r in mine if "to_serving" in r]
        by[kind] = {
            "count": len(mine),
            "expected_failover": expect,
            "as_expected": sum(bool(r["as_expected"]) for r in mine),
            "p50": pct(xs, 50),
            "p99": pct(xs, 99),
            "max": max(xs) if xs else float("nan"),
            "overlaps": sum(len(r.get("overlaps", [])) for r in mine),
            "aftershocks": sum(bool(r.get("aftershocks")) for r in mine),
        }
    fo = [r["to_serving"] for r in runs if KINDS[r["kind"]] and r["kind"] != "planned" and "to_serving" in r]
    return {
        "by_kind": by,
        "unplanned_failover": {
            "count": len(fo),
            "p50": pct(fo, 50),
            "p99": pct(fo, 99),
            "max": max(fo, default=0),
        },
        "overlaps": overlaps,
        "runs_as_expected": sum(bool(r["as_expected"]) for r in runs),
    }


def table(out: dict[str, Any]) -> str:
    s = out["summary"]
    lines = [
        f"failover bench: {out['runs']} runs, seed {out['seed']}, lease {LEASE:g}s, check every "
        f"{CHECK_INTERVAL:g}s (2 failures), poll 200ms; {out['wall']:.0f}s",
        f"{'fault':<13}{'runs':>5} {'expect':>9} {'as exp.':>8} {'p50 s':>7} {'p99 s':>7} {'max s':>7}"
        f" {'overlaps':>9} {'aftershock':>10}",
    ]
    for kind, k in s["by_kind"].items():
        lines.append(
            f"{kind:<13}{k['count']:>5} {'failover' if k['expected_failover'] else 'none':>9} "
            f"{k['as_expected']:>8} {k['p50']:>7.2f} {k['p99']:>7.2f} {k['max']:>7.2f} {k['overlaps']:>9}"
            f" {k['aftershocks']:>10}"
        )
    lines.append(
        "(to serving: fault -> the new term's first line; bot-kill: -> the restarted bot's first line;"
        " etcd-member/short-split: the longest gap in the primary's lines;\n aftershock: runs with one more"
        " term after the fault's outcome before one primary + one standby held for"
        f" {STEADY:g} s, e.g. the new term stepped down by the old primary's check)"
    )
    u = s["unplanned_failover"]
    ok = u["p99"] <= GOAL
    lines.append(
        f"goal: fault -> backup serving p99 <= {GOAL:g} s (lease {LEASE:g} s + one check interval): "
        f"p99 {u['p99']:.2f} s over {u['count']} unplanned failovers (p50 {u['p50']:.2f}, max "
        f"{u['max']:.2f}) -> {'MET' if ok else 'NOT MET'}"
    )
    lines.append(
        f"split-brain overlaps (Terms checker, whole log): {len(s['overlaps'])} of {out['runs']} runs; "
        f"runs as expected: {s['runs_as_expected']} of {out['runs']}"
    )
    v = out.get("vrrp")
    if v and "took" in v:
        lines.append(
            f"anchor keepalived VRRP (advert_int 1, priorities 150/100), SIGSTOP of the MASTER -> BACKUP "
            f"holds the VIP, {v['rounds']} rounds: p50 {v['p50']:.2f} s, max {v['max']:.2f} s "
            f"(documented: 3 x advert_int + skew = {v['documented']:.2f} s)"
        )
        lines.append(
            f"  clawpen unplanned failover p50 / VRRP p50 = {u['p50'] / v['p50']:.2f}x (clawpen waits the"
            f" lease out and starts a sandbox; VRRP moves an address)"
        )
        lines.append(
            f"  VRRP has no fencing: the stopped MASTER kept the VIP in {v['stopped_kept']}/{v['rounds']}"
            " rounds,"
            f" two holders for {v['both_p50']:.2f} s (p50; = the stop after the takeover) + "
            f"{v['after_p50'] * 1000:.0f} ms after SIGCONT; clawpen: 0 such moments (the fence)"
        )
    elif v:
        lines.append(
            f"anchor keepalived VRRP: not run ({v['skipped']}); documented master down interval = "
            f"3 x advert_int + skew = {v['documented']:.2f} s"
        )
    lines.append(f"planned failover data loss: {dataloss_line(out.get('data_loss'))}")
    return "\n".join(lines)


def vrrp_part(c: Cluster, work: Path, rounds: int) -> dict[str, Any]:
    documented = 3 * 1.0 + (256 - 100) / 256
    why = keepalived_missing()
    if why:
        return {"skipped": why, "documented": documented}
    got = []
    with vrrp_pair(c.fabric, work / "vrrp") as (ka, kb, vip):
        for i in range(rounds):
            r = vrrp_round(ka, kb, vip)
            log(f"vrrp {i + 1}/{rounds}: BACKUP holds the VIP after {r['took']:.2f}s")
            got.append(r)
    took = [r["took"] for r in got]
    return {
        "rounds": rounds,
        "took": took,
        "p50": pct(took, 50),
        "max": max(took),
        "documented": documented,
        "stopped_kept": sum(bool(r["stopped_master_still_holds"]) for r in got),
        "both_p50": pct([r["both_hold"] for r in got], 50),
        "after_p50": pct([r["after_resume"] for r in got], 50),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="10 runs, 3 VRRP rounds")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--vrrp-rounds", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--parts", default="vrrp,faults,dataloss", help="any of vrrp,faults,dataloss")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("ha_bench: run as root (network namespaces, etcd, bubblewrap)", file=sys.stderr)
        return 2
    runs = 10 if args.quick else args.runs
    vrounds = 3 if args.quick else args.vrrp_rounds
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rnd = random.Random(seed)
    kinds = [rnd.choice(list(KINDS)) for _ in range(runs)]
    log(f"seed {seed}: {' '.join(kinds)}")
    signal.signal(signal.SIGTERM, interrupted)
    base = Path("/work/scratch-habench") if Path("/work").is_dir() else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ha-bench-", dir=base))
    work.chmod(0o755)  # the bots (their own uids) reach the shared log below it
    out: dict[str, Any] = {"seed": seed, "runs": runs, "kinds": kinds, "lease": LEASE, "goal": GOAL}
    start = time.time()
    results: list[dict[str, Any]] = []
    try:
        with ha_cluster(work) as b:
            parts = set(args.parts.split(","))
            if "vrrp" in parts:
                out["vrrp"] = vrrp_part(b.c, work, vrounds)
            terms = Terms(b.lines.path)
            seen: set[str] = set()
            prim, token = b.settle()
            for i, kind in enumerate(kinds if "faults" in parts else []):
                r = one_run(b, kind, rnd, prim, token)
                prim, token = r["settled"]
                bad = terms.overlaps()
                r["overlaps"] = [x for x in bad if x not in seen]
                seen.update(bad)
                results.append(r)
                log(
                    f"run {i + 1}/{runs} {kind:<12} {r['primary']}->{r.get('new_primary', r['primary'])}"
                    f" (steady: {r['settled'][0]}) "
                    f"{r.get('to_serving', float('nan')):.2f}s failover={r['failover']} "
                    f"{'ok' if r['as_expected'] else 'UNEXPECTED'} overlaps={len(bad)}"
                    f" aftershocks={len(r['aftershocks'])}" + (f" {r['error']}" if "error" in r else "")
                )
            out["overlaps_all"] = terms.overlaps()
            out["token_mismatch"] = b.lines.bad
            if "dataloss" in parts:
                try:
                    out["data_loss"] = dataloss_part(b, work)
                except (BenchError, AssertionError) as e:
                    log(f"data loss part failed: {e}")
                    out["data_loss"] = {"error": str(e)[:500]}
    except BenchError as e:
        log(f"bench stopped: {e}")
        out["error"] = str(e)
    finally:
        out["wall"] = time.time() - start
    out["results"] = results
    out["runs"] = len(results)
    out["summary"] = summarize(results, out.get("overlaps_all", []))
    print(table(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    s = out["summary"]
    met = (
        "error" not in out
        and s["unplanned_failover"]["p99"] <= GOAL
        and not s["overlaps"]
        and s["runs_as_expected"] == len(results)
    )
    return 0 if met else 1


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def shipping_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("clawpen.ha.sync") is None:
        return "workspace shipping (ha.sync) is not on this branch yet"
    return None


def dataloss_part(b: Bench, work: Path) -> dict[str, Any]:
    """A second HA bot, ``keep``, shipped through a local restic repository both hosts reach;
    ``clawpen failover keep`` on its backup; the old primary's workspace log (as its bot left it)
    against the new primary's (restored, then appended to)."""
    why = shipping_missing()
    if why:
        return {"skipped": why}
    repo = work / "restic-repo"
    for d in b.d.values():
        d.cli("secrets", "set", SYNC_SECRET, stdin=SYNC_PASSWORD)
        d.write(b.text + keep_bot(repo))
    for d in b.d.values():
        d.cli("up", timeout=120)

    def roles() -> dict[str, str]:
        return {name: d.ps().get("keep", {}).get("state", "?") for name, d in b.d.items()}

    if not wait_until(lambda: sorted(roles().values()) == ["running", "standby"], 60, 0.3):
        raise BenchError(f"bot keep: no primary and standby: {roles()}")
    rounds = []
    for _ in range(3):  # there and back and there again
        prim = next(name for name, state in roles().items() if state == "running")
        rounds.append(handover(b, prim, b.other(prim)))
    worst = max(rounds, key=lambda r: (r["lost_bytes"], not r["continues"]))
    return {**worst, "rounds": rounds, "lost_total": sum(r["lost_bytes"] for r in rounds)}


def handover(b: Bench, prim: str, back: str) -> dict[str, Any]:
    ws = {name: d.spec.parent / "keep" for name, d in b.d.items()}
    time.sleep(6)  # lines, and one interval shipment (every 5 s)
    t0 = time.time()
    done = b.d[back].cli("failover", "keep", "--json", check=False, timeout=120)
    took = time.time() - t0
    if done.returncode != 0:
        raise BenchError(f"clawpen failover keep -> {done.returncode}: {done.stderr.strip()[-300:]}")
    b.d[back].wait_state("keep", "running", timeout=60)
    b.d[prim].wait_state("keep", "standby", timeout=60)
    before = lines_of(ws[prim])
    wait_until(lambda: len(lines_of(ws[back])) > len(before) + 100, 15, 0.1)
    res = bytes_lost(before, lines_of(ws[back]))
    res.update({"from": prim, "to": back, "failover_cli_s": took, "cli": done.stdout.strip()[-400:]})
    log(f"planned failover of keep {prim} -> {back}: {res['lost_bytes']} bytes lost, {took:.2f}s")
    return res


def dataloss_line(dl: dict[str, Any] | None) -> str:
    if not dl:
        return "not run"
    if "skipped" in dl:
        return f"not measured: {dl['skipped']}"
    if "error" in dl:
        return f"not measured: {dl['error']}"
    return (
        f"{dl['lost_total']} bytes lost over {len(dl['rounds'])} handovers (worst: {dl['lost_bytes']} of"
        f" {dl['before_bytes']}; the old primary's log as its bot left it"
        f" vs the new primary's restored one; numbering continues: {dl['continues']}, "
        f"{dl['last_line_before']!r} -> {dl['first_line_after']!r}); `clawpen failover` took "
        f"{dl['failover_cli_s']:.2f} s"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: everything the bench made is removed")
        sys.exit(130)
