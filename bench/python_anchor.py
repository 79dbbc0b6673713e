"""Python anchor for the leasepool benchmark harness.

Runs the same scenarios as the Rust harness against the Python package `leasepool` 0.1.3
(thread backend) and prints one JSON object on stdout: {scenario_id: value, ...}.

Usage: python_anchor.py '<json params>'   (the harness passes the same parameters it uses)
"""

import asyncio
import json
import os
import statistics
import sys
import time

from leasepool import LeasedExecutorManager


def noop():
    return None


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def manager(max_pools, workers, min_pools=None):
    m = LeasedExecutorManager(
        max_pools=max_pools,
        min_pools=min_pools if min_pools is not None else max_pools,
        workers_per_pool=workers,
        name_prefix="py-anchor",
    )
    await m.start()
    return m


def median_of(rounds, fn):
    fn()  # warm-up
    return statistics.median(fn() for _ in range(rounds))


async def s1(n):
    m = await manager(1, 1)
    lease = await m.acquire(owner="s1")
    t = time.perf_counter()
    for _ in range(n):
        await lease.run(noop)
    dt = time.perf_counter() - t
    await lease.release()
    await m.stop()
    return dt / n * 1e6


async def s2(n):
    m = await manager(1, 1)
    t = time.perf_counter()
    for _ in range(n):
        lease = await m.acquire(owner="s2")
        await lease.run(noop)
        await lease.release()
    dt = time.perf_counter() - t
    await m.stop()
    return dt / n * 1e6


async def s3(jobs, pools, workers):
    m = await manager(pools, workers)
    leases = [await m.acquire(owner=f"s3-{i}") for i in range(pools)]
    per = jobs // pools
    t = time.perf_counter()
    await asyncio.gather(*(l.run(noop) for l in leases for _ in range(per)))
    dt = time.perf_counter() - t
    for l in leases:
        await l.release()
    await m.stop()
    return per * pools / dt


async def s4(tasks, pools, sleep_s):
    m = await manager(pools, 1)

    async def one(i):
        lease = await m.acquire(owner=f"s4-{i}")
        await lease.run(time.sleep, sleep_s)
        await lease.release()

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(tasks)))
    dt = time.perf_counter() - t
    await m.stop()
    return (tasks * sleep_s / pools) / dt


async def s5(waiters, pools, deadline_s):
    m = await manager(pools, 1)
    holders = [await m.acquire(owner="holder") for _ in range(pools)]
    served = []
    base = rss_kib()

    async def one(i):
        lease = await m.acquire(owner=f"w{i}")
        served.append(i)
        await lease.release()

    tasks = [asyncio.create_task(one(i)) for i in range(waiters)]
    await asyncio.sleep(0)
    for _ in range(50):
        await asyncio.sleep(0.01)
    peak = rss_kib()
    t = time.perf_counter()
    for h in holders:
        await h.release()
    done, pending = await asyncio.wait(tasks, timeout=deadline_s)
    dt = time.perf_counter() - t
    for p in pending:
        p.cancel()
    overtakes = 0
    high = -1
    for i in served:
        if i < high:
            overtakes += 1
        high = max(high, i)
    await m.stop()
    return {
        "rate": len(served) / dt if not pending else None,
        "overtakes": overtakes,
        "bytes_per_waiter": (peak - base) * 1024 / waiters,
        "finished": not pending,
    }


async def s6(n, tasks, per_task, pools):
    m = await manager(1, 1)
    t = time.perf_counter()
    for _ in range(n):
        lease = await m.acquire()
        await lease.release()
    single = n / (time.perf_counter() - t)
    await m.stop()

    m = await manager(pools, 1)

    async def loop():
        for _ in range(per_task):
            lease = await m.acquire()
            await lease.release()

    t = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(tasks)))
    contended = tasks * per_task / (time.perf_counter() - t)
    await m.stop()
    return single, contended


async def pmanager(max_pools, workers):
    m = LeasedExecutorManager(
        backend="process",
        max_pools=max_pools,
        min_pools=max_pools,
        workers_per_pool=workers,
        name_prefix="py-anchor-proc",
    )
    await m.start()
    return m


async def p1(n):
    m = await pmanager(1, 1)
    lease = await m.acquire(owner="p1")
    await lease.run(noop)  # the worker process starts on first use
    t = time.perf_counter()
    for _ in range(n):
        await lease.run(noop)
    dt = time.perf_counter() - t
    await lease.release()
    await m.stop()
    return dt / n * 1e6


async def p2(calls, pools, workers):
    m = await pmanager(pools, workers)
    leases = [await m.acquire(owner=f"p2-{i}") for i in range(pools)]
    await asyncio.gather(*(l.run(noop) for l in leases for _ in range(workers)))
    per = calls // pools
    t = time.perf_counter()
    await asyncio.gather(*(l.run(noop) for l in leases for _ in range(per)))
    dt = time.perf_counter() - t
    for l in leases:
        await l.release()
    await m.stop()
    return per * pools / dt


def main():
    p = json.loads(sys.argv[1])
    rounds = p["rounds"]
    out = {}

    def run(coro_fn):
        return asyncio.run(coro_fn())

    out["S1"] = median_of(rounds, lambda: run(lambda: s1(p["s1_ops"])))
    out["S2"] = median_of(rounds, lambda: run(lambda: s2(p["s2_ops"])))
    out["S3"] = median_of(rounds, lambda: run(lambda: s3(p["s3_jobs"], 2, 4)))
    out["S4"] = median_of(rounds, lambda: run(lambda: s4(p["s4_tasks"], 8, p["s4_sleep_ms"] / 1000)))
    s5r = run(lambda: s5(p["s5_waiters"], 4, p["python_deadline_s"]))
    out["S5_rate"] = s5r["rate"]
    out["S5_overtakes"] = s5r["overtakes"]
    out["S5_bytes_per_waiter"] = s5r["bytes_per_waiter"]
    s6r = [run(lambda: s6(p["s6_ops"], 64, p["s6_per_task"], 4)) for _ in range(rounds)]
    out["S6_uncontended"] = statistics.median(r[0] for r in s6r)
    out["S6_contended"] = statistics.median(r[1] for r in s6r)
    if p.get("p1_ops"):
        out["P1"] = median_of(rounds, lambda: run(lambda: p1(p["p1_ops"])))
        out["P2"] = median_of(rounds, lambda: run(lambda: p2(p["p2_calls"], 2, 4)))
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
