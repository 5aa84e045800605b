"""A small closed-loop HTTP/1.1 load generator (wrk is not installable here): N keep-alive
connections, each sending its next request when the previous answer arrived, for D seconds.

    python bench/loadgen.py URL PATH BODY_TEMPLATE CONNECTIONS SECONDS [TIMEOUT_S [RATE]]

With RATE, an open loop instead: Poisson arrivals at RATE requests/s (CONNECTIONS ignored).

BODY_TEMPLATE's "{n}" becomes a counter prefixed with this run's random nonce, so every request
is fresh (no response-cache hits, also across repeated runs against one server). Prints one
JSON line: requests/s, p50/p99 latency of 200s, counts by status, timeouts, 429s carrying
Retry-After, and this process's own CPU seconds (its share of the machine is reported beside
the figures: the generator runs on the same 2 cores as the server). A tool, not a bench:
bench_serving.py judges its figures MET or MISSED against the targets.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter
from urllib.parse import urlparse


async def one(conn, host, port, path, body, timeout_s, out, t0):
    """One request on `conn` ([reader, writer] or [None, None]); latency counted from t0."""
    if conn[1] is None:
        conn[0], conn[1] = await asyncio.open_connection(host, port)
    reader, writer = conn
    req = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        writer.write(req)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout_s)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        out["timeouts"] += 1
        writer.close()
        conn[0] = conn[1] = None
        return
    out["status"][status] += 1
    if status == 200:
        out["lat"].append(time.perf_counter() - t0)
    elif status == 429 and "retry-after" in headers:
        out["retry_after"] += 1
    if headers.get("connection", "").lower() == "close":
        writer.close()
        conn[0] = conn[1] = None


def _body(template, counter):
    counter[0] += 1
    return template.replace("{n}", f"{counter[1]}-{counter[0]}").encode()


async def worker(host, port, path, template, stop_at, timeout_s, out, counter):
    """Closed loop: the next request when the previous answer arrived."""
    conn = [None, None]
    while time.perf_counter() < stop_at:
        await one(conn, host, port, path, _body(template, counter), timeout_s, out, time.perf_counter())
    if conn[1] is not None:
        conn[1].close()


async def open_loop(host, port, path, template, rate, stop_at, timeout_s, out, counter):
    """Open loop: Poisson arrivals at `rate` per second whatever the answers do (how overload
    arrives from many independent callers), each on an idle keep-alive connection or a new
    one; latency counts from the scheduled arrival, so a slow server cannot hide its queue."""
    import random

    idle: list[list] = []
    tasks = set()

    async def arrive(t0):
        # a connection idle for longer than the server's keep-alive (uvicorn: 5 s) may be
        # closing under us: dropped, as HTTP client pools do
        while idle and time.perf_counter() - idle[-1][2] > 4.0:
            idle.pop()[1].close()
        conn = idle.pop()[:2] if idle else [None, None]
        await one(conn, host, port, path, _body(template, counter), timeout_s, out, t0)
        if conn[1] is not None:
            idle.append([conn[0], conn[1], time.perf_counter()])

    rng = random.Random(0)
    next_at = time.perf_counter()
    while next_at < stop_at:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(arrive(next_at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += rng.expovariate(rate)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s + 1)
    for conn in idle:
        conn[1].close()


async def main(url, path, template, conns, seconds, timeout_s, rate=None):
    u = urlparse(url)
    out = {"lat": [], "status": Counter(), "timeouts": 0, "retry_after": 0}
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    counter = [0, str(100 + int.from_bytes(os.urandom(2), 'big') % 900)]  # short: few tokens
    if rate:
        await open_loop(u.hostname, u.port, path, template, rate, stop_at, timeout_s, out, counter)
    else:
        await asyncio.gather(*(worker(u.hostname, u.port, path, template, stop_at, timeout_s, out, counter)
                               for _ in range(conns)))
    wall = time.perf_counter() - t0
    lat = sorted(out["lat"])
    ru = resource.getrusage(resource.RUSAGE_SELF)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

    total = sum(out["status"].values())
    print(json.dumps({"connections": conns, "rate": rate, "seconds": round(wall, 2), "ok_rps": round(len(lat) / wall, 1),
                      "rps": round(total / wall, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                      "status": {str(k): v for k, v in out["status"].items()}, "timeouts": out["timeouts"],
                      "retry_after": out["retry_after"], "cpu_s": round(ru.ru_utime + ru.ru_stime, 2)}))


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], int(a[3]), float(a[4]), float(a[5]) if len(a) > 5 else 10.0,
                     float(a[6]) if len(a) > 6 else None))
