"""Each engine (a route's decoder, an embedder) in a process of its own, so that model work
never waits for the HTTP process's GIL.

Measured on 2 cores (bench/bench_serving.py): with the decoding thread in the HTTP process,
every GIL hand-off between the event loop and the decoder costs up to the interpreter's switch
interval (5 ms): a step of 1 ms of model time took ~12 ms under load, and the tokenizer call on
the loop (which releases the GIL) 1.4 ms instead of 50 us. In a process of its own the engine's
thread only shares the GIL with the pipe reader, and the event loop with nothing.

Protocol over one duplex pipe (pickled tuples, several per message to save system calls):
  front -> worker: ("job", job_id, submit's arguments) | ("cancel", job_id) | ("close",)
  worker -> front: [("ok", job_id, GenResult) | ("err", job_id, kind, message)
                    | ("metric", method, args), ...]
The front reads the pipe on its event loop (add_reader): no thread of its own.
Admission is bounded on the front (max_batch running + max_queue waiting): a full engine
refuses at once with QueueFull (429), before anything crosses the pipe.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from ossa_serving.batching import DeadlineExceeded, QueueFull

log = logging.getLogger("ossa.serving")


@dataclass(frozen=True)
class EngineConfig:
    """What a worker needs to load one route's engine: plain values, picklable."""

    name: str
    engine_dir: str
    model_file: str
    kv_model_file: str | None
    domain_token: str
    intra_op_threads: int
    max_batch: int
    max_batch_tokens: int
    max_delay_ms: float


@dataclass(frozen=True)
class EmbedderConfig:
    """One embedding model behind a batcher, in a worker process."""

    name: str
    model_path: str | None
    max_seq_length: int | None
    backend: str
    onnx_cache_dir: str
    intra_op_threads: int
    max_batch: int
    max_cost: int
    max_delay_ms: float


class EngineGone(Exception):
    """The engine's process exited: its requests fail with 503, the route reports it."""


class _MetricsProxy:
    """Stands in for ossa_serving.metrics.Metrics inside a worker: calls are queued and sent
    with the next results, then replayed on the front's registry."""

    def __init__(self):
        self.pending: list[tuple] = []
        self.lock = threading.Lock()

    def __getattr__(self, method: str):
        def record(*args):
            with self.lock:
                self.pending.append(("metric", method, args))

        return record

    def take(self) -> list[tuple]:
        with self.lock:
            out, self.pending = self.pending, []
        return out


def _worker_main(inbox, conn, cfg: EngineConfig) -> None:  # runs in the child process
    import signal

    # the front decides when we stop: Ctrl-C or a SIGTERM to the whole process group must not
    # kill engines while the front drains; a front that dies closes our pipe and we exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ossa_serving.engines import build_engine

    metrics = _MetricsProxy()
    outbox: list[tuple] = []
    lock = threading.Lock()

    def flush() -> None:
        with lock:
            items = outbox[:]
            outbox.clear()
        items += metrics.take()
        if items:
            try:
                conn.send(items)
            except (BrokenPipeError, OSError):
                pass

    try:
        if isinstance(cfg, EmbedderConfig):
            from ossa_serving.engines import build_embedder

            engine, info = build_embedder(cfg, metrics, max_queue=1 << 30, after_batch=flush)
        else:
            engine, window = build_engine(cfg, metrics, max_queue=1 << 30, after_tick=flush)
            info = {"window": window, "kv": engine.kv_cache}
    except Exception as e:  # the front reports it as the reload's error
        conn.send([("failed", f"{type(e).__name__}: {e}")])
        return
    import gc

    gc.collect()
    gc.freeze()  # as the front does (app.py): no full collection of the loaded libraries
    conn.send([("ready", info)])
    futures: dict[int, Any] = {}

    def done(job_id: int, fut) -> None:
        futures.pop(job_id, None)
        if fut.cancelled():
            return
        exc = fut.exception()
        with lock:
            if exc is None:
                outbox.append(("ok", job_id, fut.result()))
            else:
                kind = "deadline" if isinstance(exc, DeadlineExceeded) else type(exc).__name__
                outbox.append(("err", job_id, kind, str(exc)))

    try:
        while True:
            msg = inbox.recv()
            if msg[0] == "job":
                _, job_id, args = msg
                fut = engine.submit(*args)
                futures[job_id] = fut
                fut.add_done_callback(lambda f, j=job_id: done(j, f))
            elif msg[0] == "cancel":
                fut = futures.pop(msg[1], None)
                if fut is not None:
                    fut.cancel()
            elif msg[0] == "close":
                break
    except (EOFError, OSError):
        pass  # the front went away
    finally:
        engine.close()
        flush()


class EngineProcess:
    """The front's handle on one engine in its own process: `submit` returns an asyncio future
    (call it on the event loop). Same admission rule as the in-process engine's bounded queue."""

    def __init__(self, cfg: EngineConfig | EmbedderConfig, *, max_queue: int, metrics: Any = None, start_timeout_s: float = 120.0):
        import multiprocessing as mp

        self.name, self.cfg, self.metrics = cfg.name, cfg, metrics
        self.capacity = cfg.max_batch + max_queue
        ctx = mp.get_context("spawn")  # the front has threads: never fork it
        # one pipe each way: the event loop makes the read end non-blocking (add_reader), which
        # a duplex pipe would impose on the writes too, and a pickled message read half-way
        # raises there; _on_readable reads frames itself
        inbox, self._out = ctx.Pipe(duplex=False)
        self._conn, outbox = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_worker_main, args=(inbox, outbox, cfg), name=f"engine {cfg.name}",
                                   daemon=True)
        self.process.start()
        inbox.close()
        outbox.close()
        self._buf = bytearray()
        if not self._conn.poll(start_timeout_s):
            self.process.kill()
            raise RuntimeError(f"engine {cfg.name} did not start within {start_timeout_s:g}s")
        try:
            first = self._conn.recv()[0]
        except EOFError:
            raise RuntimeError(f"engine {cfg.name} exited while loading (exit code {self.process.exitcode})") from None
        if first[0] != "ready":
            self.process.join(5)
            raise RuntimeError(f"engine {cfg.name} failed to load: {first[1]}")
        self.info = info = first[1]
        self.window: int | None = info.get("window")
        self.kv_cache: bool = bool(info.get("kv"))
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.gone: str | None = None

    def busy(self) -> bool:
        return bool(self._pending)

    def at_capacity(self) -> bool:
        return len(self._pending) >= self.capacity

    def _attach(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._conn.fileno(), self._on_readable)

    def submit(self, *args: Any) -> asyncio.Future:
        """The engine's own submit(...) arguments: (ids, params, timeout_s) for a decoder,
        (texts, cost, timeout_s) for an embedder."""
        if self.gone:
            raise EngineGone(self.gone)
        if self._loop is None:
            self._attach()
        if len(self._pending) >= self.capacity:
            raise QueueFull(self.name, len(self._pending) - self.cfg.max_batch)
        job_id = next(self._ids)
        fut = self._loop.create_future()
        self._pending[job_id] = fut
        try:
            self._out.send(("job", job_id, args))
        except (BrokenPipeError, OSError) as e:
            self._pending.pop(job_id, None)
            self._mark_gone(f"engine process unreachable ({type(e).__name__})")
            raise EngineGone(self.gone) from None
        fut.add_done_callback(lambda f, j=job_id: self._cancelled(j, f))
        return fut

    def _cancelled(self, job_id: int, fut: asyncio.Future) -> None:
        # the caller gave up (deadline): the worker drops it before it costs model time
        if fut.cancelled() and self._pending.pop(job_id, None) is not None and not self.gone:
            try:
                self._out.send(("cancel", job_id))
            except (BrokenPipeError, OSError):
                pass

    def _on_readable(self) -> None:
        import os
        import pickle
        import struct

        try:
            chunk = os.read(self._conn.fileno(), 1 << 20)
        except BlockingIOError:
            return
        except OSError as e:
            chunk, why = b"", f"{type(e).__name__}: {e}"
        else:
            why = "end of its pipe"
        if not chunk:
            self.process.join(0.5)
            self._mark_gone(f"engine process exited (exit code {self.process.exitcode}; {why})")
            return
        buf = self._buf
        buf += chunk
        # multiprocessing.Connection's frames: a 4-byte big-endian length (-1: an 8-byte one follows)
        while len(buf) >= 4:
            (n,), head = struct.unpack_from("!i", buf), 4
            if n == -1:
                if len(buf) < 12:
                    break
                (n,), head = struct.unpack_from("!Q", buf, 4), 12
            if len(buf) < head + n:
                break
            items = pickle.loads(bytes(buf[head:head + n]))
            del buf[:head + n]
            for item in items:
                self._deliver(item)

    def _deliver(self, item: tuple) -> None:
        kind = item[0]
        if kind == "metric":
            if self.metrics is not None:
                getattr(self.metrics, item[1])(*item[2])
            return
        fut = self._pending.pop(item[1], None)
        if fut is None or fut.done():
            return
        if kind == "ok":
            fut.set_result(item[2])
        elif item[2] == "deadline":
            fut.set_exception(DeadlineExceeded(item[3]))
        else:
            fut.set_exception(RuntimeError(f"{item[2]}: {item[3]}"))

    def _mark_gone(self, why: str) -> None:
        if self.gone:
            return
        self.gone = why = f"{self.name}: {why}"  # the 503's message names the engine
        log.error("%s", why)
        if self._loop is not None:
            self._loop.remove_reader(self._conn.fileno())
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(EngineGone(why))

    def close(self) -> None:
        if self._loop is not None and not self.gone:
            try:
                self._loop.call_soon_threadsafe(self._loop.remove_reader, self._conn.fileno())
            except RuntimeError:
                pass  # the loop is closed already
        try:
            self._out.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
