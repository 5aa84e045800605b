"""Shared fixtures: isolated Dagster instance and data root per test, corpus folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "ossa_assets" / "corpora" / "sample"
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A fresh OSSA_DATA_ROOT and DAGSTER_HOME (with the project's dagster.yaml)."""
    root = tmp_path / "data"
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("OSSA_DATA_ROOT", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def copy_sample(dest: Path) -> Path:
    shutil.copytree(SAMPLE, dest, dirs_exist_ok=True)
    return dest


def tiny_resources(data_root: Path, corpus_root: Path) -> dict:
    from resources.corpus import CorpusSources
    from resources.mlflow import MlflowResource
    from resources.qdrant import QdrantResource
    from resources.storage import ArtifactIOManager, ArtifactStore

    return {
        "corpus": CorpusSources(root=str(corpus_root)),
        "io_manager": ArtifactIOManager(root=str(data_root)),
        "store": ArtifactStore(root=str(data_root)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{data_root / 'mlflow.db'}"),
        "qdrant": QdrantResource(path=str(data_root / "qdrant")),
    }
