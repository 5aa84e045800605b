"""Releases: the one answer to "what is live" on a route.

A release names the variants serving one route and their traffic weights: a `champion`, and at
most one `challenger` (the canary). It moves only by the transitions below (a challenger enters,
is promoted, is rolled back; a person pins a variant), each one a new release version written
with compare-and-set, so two concurrent moves cannot interleave: the second one fails with
`ReleaseConflict` and must re-read. Every release records who moved it, why and on what
evidence; the history is kept beside it.

The store is the source of truth. The MLflow aliases (`champion`, `challenger`), the Dagster
materialization of `serving/release` and the lineage graph are written *from* a release after
it moved; the `registry_mirrors_release` check (ossa_assets/serving/assets.py) says where the
aliases disagree with it.

Stores: a directory under the data root (the embedded default), or Postgres by URL
(`OSSA_RELEASE_URL=postgresql://...`) so that several server processes on different machines
follow one release. No Dagster here: the server, the sensors and the CLI use this module too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from ossa_assets.lib.artifacts import atomic_write_text, hash_dir, lineage_id_for, sha256_json
from ossa_assets.lib.deployment import DeploymentError, RouteSpec, _build
from ossa_assets.lib.domains import ROUTES

CHAMPION, CHALLENGER = "champion", "challenger"
RELEASE_ASSET = "serving/release"  # ossa_assets.keys.RELEASE (no Dagster import here)
ROLES = (CHAMPION, CHALLENGER)
# a rolled-back or replaced-by-hand variant stays out of the release for good (unless pinned)
MAX_REJECTED = 64


class ReleaseConflict(RuntimeError):
    """Another move changed the release since it was read: re-read and decide again."""


class ReleaseError(ValueError):
    """A transition that does not apply, or a release that cannot be served."""


@dataclass(frozen=True)
class Variant:
    """One model serving a share of a route's traffic."""

    name: str  # versioned and never reused: "<domain>-<engine content version[:12]>"
    role: str  # champion | challenger
    weight: float  # share of the route's traffic, 0..1; the variants' weights sum to 1
    spec: RouteSpec  # the engine files
    registered_model: str | None = None  # the MLflow model whose aliases mirror this release
    registry_version: str | None = None
    pinned_by: str | None = None  # a person who pinned it by hand (`ossa release pin`)


@dataclass(frozen=True)
class Release:
    route: str
    version: int  # +1 on every move: the compare-and-set token
    variants: tuple[Variant, ...]
    moved_by: str  # "asset:serving/release run <id>", "sensor:rollback", "person:<name>"
    reason: str
    at: str
    evidence: dict[str, Any] = field(default_factory=dict)
    previous: int | None = None
    rejected: tuple[str, ...] = ()  # variant names rolled back: never offered again

    @property
    def data_version(self) -> str:
        """What is served (route, version, variants): not who moved it or when."""
        return sha256_json({"route": self.route, "version": self.version,
                            "variants": [asdict(v) for v in self.variants]})

    @property
    def lineage_id(self) -> str:
        """The id the `serving/release[<domain>]` materialization of this version carries in
        Dagster and the lineage graph; servers put it in every answer."""
        return lineage_id_for("Release", RELEASE_ASSET, ROUTES[self.route], self.data_version)

    def variant(self, role: str) -> Variant | None:
        return next((v for v in self.variants if v.role == role), None)

    def variant_named(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    @property
    def champion(self) -> Variant | None:
        return self.variant(CHAMPION)

    @property
    def challenger(self) -> Variant | None:
        return self.variant(CHALLENGER)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = [asdict(v) for v in self.variants]
        d["rejected"] = list(self.rejected)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> Release:
        if not isinstance(d, dict):
            raise ReleaseError("release: expected a JSON object")
        route = d.get("route")
        if route not in ROUTES:
            raise ReleaseError(f"route: unknown route {route!r} (known: {', '.join(ROUTES)})")
        if not isinstance(d.get("version"), int) or d["version"] < 1:
            raise ReleaseError(f"{route}: version must be a positive integer")
        variants = []
        for i, v in enumerate(d.get("variants") or []):
            if not isinstance(v, dict):
                raise ReleaseError(f"{route}: variants[{i}]: expected an object")
            try:
                spec = _build(RouteSpec, v.get("spec"), f"{route}.variants[{i}].spec")
            except DeploymentError as e:
                raise ReleaseError(str(e)) from None
            variants.append(Variant(**{**v, "spec": spec}))
        rel = cls(route=route, version=d["version"], variants=tuple(variants), moved_by=str(d.get("moved_by", "")),
                  reason=str(d.get("reason", "")), at=str(d.get("at", "")), evidence=dict(d.get("evidence") or {}),
                  previous=d.get("previous"), rejected=tuple(d.get("rejected") or ()))
        validate(rel)
        return rel

    @classmethod
    def from_json(cls, text: str) -> Release:
        return cls.from_dict(json.loads(text))


def validate(rel: Release) -> None:
    """What every release must satisfy before it is written or served."""
    where = f"release {rel.route}@{rel.version}"
    roles = [v.role for v in rel.variants]
    if roles.count(CHAMPION) != 1:
        raise ReleaseError(f"{where}: exactly one champion is required (got roles {roles})")
    if roles.count(CHALLENGER) > 1 or any(r not in ROLES for r in roles):
        raise ReleaseError(f"{where}: roles must be one champion and at most one challenger (got {roles})")
    names = [v.name for v in rel.variants]
    if len(set(names)) != len(names):
        raise ReleaseError(f"{where}: variant names must differ (got {names})")
    if any(not 0.0 <= v.weight <= 1.0 for v in rel.variants) or abs(sum(v.weight for v in rel.variants) - 1) > 1e-9:
        raise ReleaseError(f"{where}: weights must lie in [0, 1] and sum to 1 "
                           f"(got {[v.weight for v in rel.variants]})")
    for v in rel.variants:
        if v.spec.domain != ROUTES[rel.route]:
            raise ReleaseError(f"{where}: variant {v.name} serves domain {v.spec.domain!r}, "
                               f"the route serves {ROUTES[rel.route]!r}")


def engine_spec(domain: str, engine_path: str, content_version: str, lineage_id: str, *,
                model_file: str = "model.int8.onnx", kv_model_file: str | None = None,
                engine: str = "onnxruntime-int8") -> RouteSpec:
    """The spec of a published engine directory, named `<domain>-<content version[:12]>` (a
    variant's name: versioned, never reused)."""
    return RouteSpec(domain=domain, model_version=f"{domain}-{content_version[:12]}", engine_path=str(engine_path),
                     lineage_id=lineage_id, model_file=model_file, kv_model_file=kv_model_file, engine=engine,
                     content_version=content_version)


def verify_engine(spec: RouteSpec) -> None:
    """Refuse an engine that is missing or corrupt, before any traffic reaches it: its files
    exist and, for a content-versioned engine directory, still hash to the version in its name."""
    path = Path(spec.engine_path)
    if not path.is_dir():
        raise ReleaseError(f"engine {spec.model_version}: {path} does not exist")
    for f in filter(None, (spec.model_file, spec.kv_model_file, "tokenizer.json")):
        if not (path / f).is_file():
            raise ReleaseError(f"engine {spec.model_version}: {path / f} is missing")
    if spec.content_version:
        actual = hash_dir(path)
        if actual != spec.content_version:
            raise ReleaseError(f"engine {spec.model_version}: the files in {path} hash to {actual[:16]}, "
                               f"not to the version {spec.content_version[:16]} it was published as (corrupt)")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _next(cur: Release | None, route: str, variants: list[Variant], moved_by: str, reason: str,
          evidence: dict | None, rejected: tuple[str, ...] | None = None) -> Release:
    rel = Release(route=route, version=(cur.version + 1) if cur else 1, variants=tuple(variants),
                  moved_by=moved_by, reason=reason, at=_now(), evidence=dict(evidence or {}),
                  previous=cur.version if cur else None,
                  rejected=(rejected if rejected is not None else (cur.rejected if cur else ()))[-MAX_REJECTED:])
    validate(rel)
    return rel


def offer(cur: Release | None, route: str, candidate: Variant, *, canary_weight: float, moved_by: str,
          reason: str, evidence: dict | None = None) -> Release | None:
    """A candidate that passed its offline gates enters the release: as the champion of a route
    that has none, else as the challenger with `canary_weight` of the traffic (replacing an
    earlier challenger). `canary_weight >= 1` promotes it at once. None: nothing to move (it is
    already serving, or it was rolled back before)."""
    if not 0.0 < canary_weight <= 1.0:
        raise ReleaseError(f"canary_weight must lie in (0, 1], got {canary_weight}")
    if cur is not None:
        if any(v.name == candidate.name for v in cur.variants):
            return None
        if candidate.name in cur.rejected:
            return None
    champion = cur.champion if cur else None
    if champion is None or canary_weight >= 1.0:
        return _next(cur, route, [replace(candidate, role=CHAMPION, weight=1.0)], moved_by, reason, evidence)
    return _next(cur, route, [replace(champion, weight=1.0 - canary_weight),
                              replace(candidate, role=CHALLENGER, weight=canary_weight)], moved_by, reason, evidence)


def promote(cur: Release | None, *, moved_by: str, reason: str, evidence: dict | None = None) -> Release:
    """The challenger becomes the champion with all the traffic; the old champion leaves."""
    if cur is None or cur.challenger is None:
        raise ReleaseError("promote: the release has no challenger")
    return _next(cur, cur.route, [replace(cur.challenger, role=CHAMPION, weight=1.0)], moved_by, reason, evidence)


def rollback(cur: Release | None, *, moved_by: str, reason: str, evidence: dict | None = None) -> Release:
    """The challenger leaves and is never offered again; the champion takes all the traffic."""
    if cur is None or cur.challenger is None:
        raise ReleaseError("rollback: the release has no challenger")
    assert cur.champion is not None  # validate() guarantees it
    return _next(cur, cur.route, [replace(cur.champion, weight=1.0)], moved_by, reason,
                 {**(evidence or {}), "rolled_back": cur.challenger.name},
                 rejected=(*cur.rejected, cur.challenger.name))


def pin(cur: Release | None, route: str, variant: Variant, *, person: str, reason: str) -> Release:
    """A person serves `variant` alone, whatever the gates said: recorded as pinned by them."""
    if not person:
        raise ReleaseError("pin: name the person pinning (--by)")
    if not reason:
        raise ReleaseError("pin: give a reason (--reason)")
    rejected = tuple(n for n in (cur.rejected if cur else ()) if n != variant.name)
    return _next(cur, route, [replace(variant, role=CHAMPION, weight=1.0, pinned_by=person)],
                 f"person:{person}", reason, {"pinned": variant.name}, rejected=rejected)


# -- stores -------------------------------------------------------------------------------------


class ReleaseStore(Protocol):
    def get(self, route: str) -> Release | None: ...

    def put(self, rel: Release, expected: int | None) -> Release:
        """Write `rel` if the route's current version is `expected` (None: no release yet);
        else raise ReleaseConflict."""
        ...

    def history(self, route: str) -> list[Release]: ...

    def where(self, route: str) -> str:
        """Where the route's release lives: its file, or its row (for the artifact's path)."""
        ...

    def versions(self) -> dict[str, int]:
        """Every route's current release version: what a server polls."""
        ...


def move(store: ReleaseStore, route: str, step: Callable[[Release | None], Release | None]) -> Release | None:
    """Read the route's release, compute the next one, write it with compare-and-set. The step
    decides on what it read; a concurrent move makes the write fail (ReleaseConflict), never
    interleave. None: the step had nothing to move."""
    cur = store.get(route)
    nxt = step(cur)
    if nxt is None:
        return None
    return store.put(nxt, cur.version if cur else None)


def _slug(route: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", route).strip("_")


class FileReleaseStore:
    """`<dir>/<route>.json` (current) and `<route>.history.jsonl`, under one file lock."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def path(self, route: str) -> Path:
        return self.root / f"{_slug(route)}.json"

    def get(self, route: str) -> Release | None:
        try:
            return Release.from_json(self.path(route).read_text())
        except FileNotFoundError:
            return None

    def put(self, rel: Release, expected: int | None) -> Release:
        validate(rel)
        with self._locked():
            cur = self.get(rel.route)
            have = cur.version if cur else None
            if have != expected or rel.version != (expected or 0) + 1:
                raise ReleaseConflict(f"{rel.route}: release is at version {have}, this move expected {expected}")
            with open(self.root / f"{_slug(rel.route)}.history.jsonl", "a") as h:
                h.write(json.dumps(rel.to_dict(), sort_keys=True) + "\n")
            atomic_write_text(self.path(rel.route), rel.to_json())
        return rel

    def where(self, route: str) -> str:
        return str(self.path(route))

    def history(self, route: str) -> list[Release]:
        p = self.root / f"{_slug(route)}.history.jsonl"
        if not p.exists():
            return []
        return [Release.from_dict(json.loads(line)) for line in p.read_text().splitlines() if line.strip()]

    def versions(self) -> dict[str, int]:
        out = {}
        for route in ROUTES:
            rel = self.get(route)
            if rel:
                out[route] = rel.version
        return out


class PostgresReleaseStore:
    """Tables `ossa_release` (route -> current version and document) and `ossa_release_history`.
    Compare-and-set is a conditional UPDATE (or an INSERT that must not conflict) in one
    transaction with the history row."""

    DDL = """
    CREATE TABLE IF NOT EXISTS ossa_release (
        route TEXT PRIMARY KEY, version INTEGER NOT NULL, doc JSONB NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
    CREATE TABLE IF NOT EXISTS ossa_release_history (
        route TEXT NOT NULL, version INTEGER NOT NULL, doc JSONB NOT NULL,
        at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (route, version));
    """

    def __init__(self, url: str):
        self.url = url
        self._ready = False

    @contextlib.contextmanager
    def _conn(self):
        import psycopg2

        conn = psycopg2.connect(self.url, connect_timeout=5)
        try:
            if not self._ready:
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(74201)")  # two first opens at once
                    cur.execute(self.DDL)
                self._ready = True
            yield conn
        finally:
            conn.close()

    def get(self, route: str) -> Release | None:
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute("SELECT doc FROM ossa_release WHERE route = %s", (route,))
            row = cur.fetchone()
        return Release.from_dict(row[0]) if row else None

    def put(self, rel: Release, expected: int | None) -> Release:
        validate(rel)
        if rel.version != (expected or 0) + 1:
            raise ReleaseConflict(f"{rel.route}: version {rel.version} does not follow {expected}")
        doc = json.dumps(rel.to_dict(), sort_keys=True)
        with self._conn() as conn:
            with conn, conn.cursor() as cur:
                if expected is None:
                    cur.execute("INSERT INTO ossa_release (route, version, doc) VALUES (%s, %s, %s) "
                                "ON CONFLICT (route) DO NOTHING", (rel.route, rel.version, doc))
                else:
                    cur.execute("UPDATE ossa_release SET version = %s, doc = %s, updated_at = now() "
                                "WHERE route = %s AND version = %s", (rel.version, doc, rel.route, expected))
                if cur.rowcount != 1:
                    conn.rollback()
                    raise ReleaseConflict(f"{rel.route}: the release moved since it was read (expected {expected})")
                cur.execute("INSERT INTO ossa_release_history (route, version, doc) VALUES (%s, %s, %s)",
                            (rel.route, rel.version, doc))
        return rel

    def where(self, route: str) -> str:
        """The row's address, without credentials."""
        import re as _re

        return f"{_re.sub(r'//[^@/]*@', '//', self.url)}#ossa_release/{route}"

    def history(self, route: str) -> list[Release]:
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute("SELECT doc FROM ossa_release_history WHERE route = %s ORDER BY version", (route,))
            return [Release.from_dict(r[0]) for r in cur.fetchall()]

    def versions(self) -> dict[str, int]:
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute("SELECT route, version FROM ossa_release")
            return {r: v for r, v in cur.fetchall() if r in ROUTES}


def open_store(location: str | Path) -> ReleaseStore:
    """`postgresql://...`: the shared store; anything else: a directory (the embedded default)."""
    loc = str(location)
    if loc.startswith(("postgresql://", "postgres://")):
        return PostgresReleaseStore(loc)
    if "://" in loc:
        raise ReleaseError(f"release store {loc!r}: expected a directory or a postgresql:// URL")
    return FileReleaseStore(loc)


def store_location(data_root: str | Path, url: str | None = None) -> str:
    """Where a data root's releases live: `url` when set (OSSA_RELEASE_URL), else beside the
    deployment state."""
    return url or str(Path(data_root) / "serving" / "releases")
