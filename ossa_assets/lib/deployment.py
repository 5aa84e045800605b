"""The deployment state: the contract between the `serving/deployment` asset that declares it,
the inference server (`ossa_serving`) that serves it, and the CLI.

One JSON file, `<data root>/serving/deployment.json`, written atomically (temp file + rename) so
a server never reads half a state; its path, its schema and its reading and writing live here
and nowhere else. Reading validates: a state a server cannot serve is refused with a message
naming the field, and the server keeps what it served before.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ossa_assets.lib.artifacts import atomic_write_text
from ossa_assets.lib.domains import ROUTES

STATE_FILE = ("serving", "deployment.json")


class DeploymentError(ValueError):
    """A deployment state that cannot be served; the message names the field."""


@dataclass(frozen=True)
class RouteSpec:
    """One route's engine: what it serves and where the files are."""

    domain: str
    model_version: str
    engine_path: str
    lineage_id: str
    model_file: str = "model.int8.onnx"
    engine: str = "onnxruntime-int8"
    # the decoding step with its KV cache, beside model_file; None: the server recomputes
    kv_model_file: str | None = None
    # the engine directory's content hash (publish_versioned): lets a release refuse an engine
    # whose files changed since it was published (lib.release.verify_engine); None: not checked
    content_version: str | None = None


@dataclass(frozen=True)
class SearchIndex:
    """A vector index behind /v1/search: the alias the server follows, and the collection (and
    its model) it pointed at when the deployment was declared."""

    collection: str
    lineage_id: str
    alias: str | None = None
    model_version: str | None = None


@dataclass(frozen=True)
class SearchSpec:
    url: str | None = None  # a Qdrant server; None: local mode at `path`
    path: str | None = None
    indexes: dict[str, SearchIndex] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentState:
    version: str
    lineage_id: str
    routes: dict[str, RouteSpec]
    search: SearchSpec = field(default_factory=SearchSpec)
    declared_at: str | None = None
    dagster_run_id: str | None = None
    # the release store the server follows for each route's variants (lib/release.py), and
    # the release versions this state was declared from; None: serve `routes` as they are
    release_store: str | None = None
    releases: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> DeploymentState:
        if not isinstance(d, dict):
            raise DeploymentError("deployment state: expected a JSON object")
        routes = {}
        for route, spec in _obj(d.get("routes", {}), "routes").items():
            if route not in ROUTES:
                raise DeploymentError(f"routes: unknown route {route!r} (known: {', '.join(ROUTES)})")
            routes[route] = _build(RouteSpec, spec, f"routes.{route}")
        search = _obj(d.get("search") or {}, "search")
        indexes = {k: _build(SearchIndex, v, f"search.indexes.{k}")
                   for k, v in _obj(search.get("indexes") or {}, "search.indexes").items()}
        for key in ("version", "lineage_id"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise DeploymentError(f"{key}: a non-empty string is required")
        return cls(version=d["version"], lineage_id=d["lineage_id"], routes=routes,
                   search=SearchSpec(url=search.get("url"), path=search.get("path"), indexes=indexes),
                   declared_at=d.get("declared_at"), dagster_run_id=d.get("dagster_run_id"),
                   release_store=d.get("release_store"), releases=dict(_obj(d.get("releases") or {}, "releases")))


def _obj(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        raise DeploymentError(f"{where}: expected an object")
    return v


def _build(cls, v: Any, where: str):
    v = _obj(v, where)
    names = set(cls.__dataclass_fields__)
    unknown = sorted(set(v) - names)
    if unknown:
        raise DeploymentError(f"{where}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls(**v)
    except TypeError as e:  # a required field missing
        raise DeploymentError(f"{where}: {e}") from None


def state_path(data_root: str | Path) -> Path:
    """Where the deployment state of a data root lives."""
    return Path(data_root).joinpath(*STATE_FILE)


def write_state(path: str | Path, state: DeploymentState) -> Path:
    """Atomically: a reader sees the previous state or this one, never a mix."""
    atomic_write_text(Path(path), state.to_json())
    return Path(path)


def read_state(path: str | Path) -> DeploymentState | None:
    """The state at `path`; None when none was declared yet. Raises DeploymentError (or
    json.JSONDecodeError, a ValueError too) for a file that cannot be served."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    return DeploymentState.from_dict(json.loads(text))
