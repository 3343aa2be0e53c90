"""The DNS server's fair queue: per-source token buckets, bounded queues, round-robin service."""

from __future__ import annotations

import threading

from clawpen.net.dnsfair import FairQueue, TokenBucket


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.1) and not bucket.take(0.1)  # 10/s: one token per 0.1 s
    assert sum(bucket.take(100.0) for _ in range(10)) == 5  # never more saved than the burst


def test_rate_and_queue_limits_are_per_source() -> None:
    now = [0.0]
    q: FairQueue[int] = FairQueue(rate=1.0, burst=10.0, per_source=4, total=6, clock=lambda: now[0])
    verdicts = [q.offer("attacker", i) for i in range(12)]
    assert verdicts == [None] * 4 + ["queue"] * 6 + ["rate"] * 2
    assert [q.offer("victim", i) for i in range(3)] == [None, None, "queue"]  # total of 6 reached
    assert q.take_dropped() == {"attacker": {"rate": 2, "queue": 6}, "victim": {"rate": 0, "queue": 1}}
    assert q.take_dropped() == {}
    assert not q.allow("attacker")  # no tokens left over TCP either
    assert q.allow("victim")


def test_round_robin_and_in_flight_bound() -> None:
    q: FairQueue[str] = FairQueue(rate=1e9, burst=1e9, per_source=100, total=1000, in_flight=2)
    for i in range(50):
        q.offer("attacker", f"a{i}")
    q.offer("victim", "v0")
    first = [q.take(0) for _ in range(3)]
    # The attacker's backlog holds two workers at most; the victim's query is next, not 51st.
    assert first == [("attacker", "a0"), ("victim", "v0"), ("attacker", "a1")]
    assert q.take(0) is None  # the attacker is at its in-flight bound
    q.done("attacker")
    assert q.take(0) == ("attacker", "a2")
    q.done("victim")
    assert q.take(0) is None
    assert q.queued() == 47


def test_close_wakes_waiting_workers() -> None:
    q: FairQueue[int] = FairQueue()
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(q.take()))
    t.start()
    q.close()
    t.join(2)
    assert got == [None] and not t.is_alive()
    assert q.offer("x", 1) is None and q.take(0) is None  # closed: nothing is handed out
