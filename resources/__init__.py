"""Resources per environment, side by side: what tiny/local mode embeds, production reaches by URL.

`OSSA_ENV=local` (default): everything embedded under one data root (`OSSA_DATA_ROOT`,
default `.ossa_data/`): MLflow on SQLite, Qdrant local mode, the lineage graph in a local
FalkorDB server the store starts itself. `OSSA_ENV=prod`: MLflow, Qdrant and Neo4j by URL, with
secrets from environment variables via `dg.EnvVar` (never baked into config).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from resources.corpus import DEFAULT_SOURCES, CorpusSources
from resources.graph import GraphStoreResource
from resources.k8s import GPU_POOL, executor_for, gpu_pod_tags
from resources.mlflow import MlflowResource
from resources.qdrant import QdrantResource
from resources.release import ReleaseStoreResource
from resources.storage import ArtifactIOManager, ArtifactStore

ENVIRONMENTS = ("local", "prod")


def active_env() -> str:
    env = os.environ.get("OSSA_ENV", "local")
    if env not in ENVIRONMENTS:
        raise ValueError(f"OSSA_ENV={env!r}: expected one of {ENVIRONMENTS}")
    return env


def data_root() -> Path:
    return Path(os.environ.get("OSSA_DATA_ROOT", ".ossa_data")).resolve()


def corpus_sources() -> CorpusSources:
    """The sources file (OSSA_SOURCES, default configs/sources.yaml) and OSSA_CORPUS_ROOT."""
    return CorpusSources(
        config_path=os.environ.get("OSSA_SOURCES", str(DEFAULT_SOURCES)),
        corpus_root=os.environ.get("OSSA_CORPUS_ROOT"),
    )


def build_resources(env: str | None = None) -> dict[str, Any]:
    env = env or active_env()
    root = data_root()
    corpus = corpus_sources()
    if env == "local":
        return {
            "corpus": corpus,
            "io_manager": ArtifactIOManager(root=str(root)),
            "store": ArtifactStore(root=str(root)),
            "mlflow": MlflowResource(
                tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
                artifact_root=str(root / "mlflow" / "artifacts"),
            ),
            "qdrant": QdrantResource(path=str(root / "qdrant")),
            "graph": GraphStoreResource(backend="embedded", data_dir=str(root / "graph")),
            "releases": ReleaseStoreResource(location=_release_location(root)),
        }
    # prod: artifacts on a shared volume mounted in every pod at the same path
    return {
        "corpus": corpus,
        "io_manager": ArtifactIOManager(root=str(root)),
        "store": ArtifactStore(root=str(root)),
        "mlflow": MlflowResource(
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"),
            artifact_root=os.environ.get("OSSA_MLFLOW_ARTIFACT_ROOT"),
        ),
        "qdrant": QdrantResource(url=dg.EnvVar("OSSA_QDRANT_URL"), api_key=dg.EnvVar("OSSA_QDRANT_API_KEY")),
        "graph": GraphStoreResource(
            backend="bolt",
            uri=dg.EnvVar("OSSA_NEO4J_URI"),
            user=dg.EnvVar("OSSA_NEO4J_USER"),
            password=dg.EnvVar("OSSA_NEO4J_PASSWORD"),
            batch_size=int(os.environ.get("OSSA_NEO4J_BATCH_SIZE", "1000")),
        ),
        # replicas on several machines follow one release: a shared store by URL
        "releases": ReleaseStoreResource(location=dg.EnvVar("OSSA_RELEASE_URL")),
    }


def _release_location(root: Path) -> str:
    """OSSA_RELEASE_URL when set (a local run sharing a Postgres release store with servers
    elsewhere), else the directory under the data root."""
    from ossa_assets.lib.release import store_location

    return store_location(root, os.environ.get("OSSA_RELEASE_URL") or None)


__all__ = [
    "GPU_POOL",
    "build_resources",
    "corpus_sources",
    "data_root",
    "executor_for",
    "gpu_pod_tags",
    "active_env",
]
