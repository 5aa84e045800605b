"""Lineage: query speed on a large generated history, and the cost of writing lineage in a run.

  query     a generated history in the embedded store (FalkorDB): 100,000 documents from 10
            sources, 100 corpus versions of 2,000 documents each, 1,000 model versions (tokenized
            dataset -> checkpoint -> adapter -> ONNX -> engine, each trained on one corpus
            version), three endpoints. Times upstream from engines (documents summarised, 20
            listed), downstream from documents, and a diff of two engines: medians and p95 over
            random picks (target: upstream < 200 ms).
  overhead  `ossa materialize` of the whole tiny graph in a fresh instance, then the lineage
            writing it did, replayed alone (`recorder.rebuild`, i.e. every materialization and
            every corpus's documents): lineage seconds / graph seconds (target <= 2 %).

  python bench/bench_lineage.py [--repeat 50] [--skip-overhead] [--docs 100000] [--models 1000]

Each target is printed as `TARGET <what>: <target>; measured <x> -> MET | MISSED` (bench/verdict.py);
the bench exits 1 if any target is MISSED.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ossa_assets.lib.graph_store import (  # noqa: E402
    EmbeddedFalkorDB,
    GraphStore,
    queries,  # noqa: E402
)


def generate(store: GraphStore, n_docs: int, n_corpora: int, per_corpus: int, n_models: int, n_sources: int = 10):
    t = time.perf_counter()
    store.upsert_nodes({"id": f"source:s{i}", "kind": "Source", "name": f"s{i}"} for i in range(n_sources))
    store.upsert_nodes({"id": f"doc:{i:08x}", "kind": "Document", "source": f"s{i % n_sources}",
                        "path": f"dir/{i}.yaml"} for i in range(n_docs))
    store.upsert_edges((f"doc:{i:08x}", "DERIVED_FROM", f"source:s{i % n_sources}", {}) for i in range(n_docs))
    stride = max(1, (n_docs - per_corpus) // max(1, n_corpora - 1))
    store.upsert_nodes({"id": f"corpora/curated_corpus[api_spec]@{c:04d}", "kind": "CorpusVersion",
                        "asset_key": "corpora/curated_corpus", "partition": "api_spec", "data_version": f"c{c}",
                        "storage_id": c} for c in range(n_corpora))
    store.upsert_edges((f"corpora/curated_corpus[api_spec]@{c:04d}", "CONTAINS", f"doc:{(c * stride + j) % n_docs:08x}",
                        {"at": float(c)}) for c in range(n_corpora) for j in range(per_corpus))
    store.upsert_nodes([{"id": "finetune/base_model@0", "kind": "BaseModel", "asset_key": "finetune/base_model",
                         "storage_id": 0}])
    chain = [("finetune/tokenized_corpus", "Dataset"), ("finetune/domain_checkpoint", "Checkpoint"),
             ("lora/multitask_adapter", "Adapter"), ("quantize/onnx_model", "OnnxModel"),
             ("quantize/int8_model", "Engine")]
    nodes, edges = [], []
    for m in range(n_models):
        ids = [f"{key}[api_spec]@{m:05d}" for key, _ in chain]
        for (key, kind), nid in zip(chain, ids):
            nodes.append({"id": nid, "kind": kind, "asset_key": key, "partition": "api_spec", "data_version": f"{m}",
                          "code_version": f"0.1.0+{m % 7}", "config_hash": f"k{m % 3}",
                          "storage_id": n_corpora + 10 * m + len(nodes) % 5})
        props = {"data_version": f"{m}", "code_version": f"0.1.0+{m % 7}", "at": float(m)}
        edges += [(ids[0], "DERIVED_FROM", f"corpora/curated_corpus[api_spec]@{m % n_corpora:04d}", props),
                  (ids[0], "DERIVED_FROM", "finetune/base_model@0", props),
                  (ids[1], "TRAINED_ON", ids[0], props), (ids[1], "DERIVED_FROM", "finetune/base_model@0", props),
                  (ids[2], "DERIVED_FROM", ids[1], props), (ids[3], "DERIVED_FROM", ids[2], props),
                  (ids[4], "DERIVED_FROM", ids[3], props)]
    store.upsert_nodes(nodes)
    store.upsert_edges(edges)
    store.upsert_nodes({"id": f"endpoint:/r{r}/v1", "kind": "Endpoint", "route": f"/r{r}/v1",
                        "lineage_id": f"quantize/int8_model[api_spec]@{n_models - 1 - r:05d}"} for r in range(3))
    store.upsert_edges((f"endpoint:/r{r}/v1", "SERVES", f"quantize/int8_model[api_spec]@{n_models - 1 - r:05d}", {})
                       for r in range(3))
    return time.perf_counter() - t


def _timed(fn, picks) -> list[float]:
    out = []
    for p in picks:
        t = time.perf_counter()
        fn(p)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _fmt(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"median {statistics.median(ms):.1f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms"


def query_bench(args, verdicts) -> None:
    with tempfile.TemporaryDirectory(prefix="ossa-bench-lin-") as tmp:
        backend = EmbeddedFalkorDB(Path(tmp) / "graph")
        store = GraphStore(backend)
        try:
            secs = generate(store, args.docs, args.corpora, args.per_corpus, args.models)
            counts = store.counts()
            print(f"generated in {secs:.1f}s: {sum(counts['nodes'].values())} nodes, "
                  f"{sum(counts['edges'].values())} edges ({counts['nodes'].get('Document', 0)} documents, "
                  f"{counts['nodes'].get('Engine', 0)} model versions)")
            rnd = random.Random(0)
            engines = [f"quantize/int8_model[api_spec]@{rnd.randrange(args.models):05d}" for _ in range(args.repeat)]
            up = _timed(lambda e: store.upstream(e, documents=20), engines)
            lin = store.upstream(engines[0], documents=20)
            print(f"upstream engine -> ... -> documents ({len(lin.nodes)} artifacts, {lin.documents['total']} "
                  f"documents in {len(lin.documents['by_source'])} sources, 20 listed): {_fmt(up)}")
            verdicts.at_most(f"upstream engine -> documents on {args.docs} documents / {args.models} model versions "
                             f"(median of {len(up)})", statistics.median(up), 200.0, " ms")
            ep = _timed(lambda r: store.upstream(queries.resolve(store, r), documents=20),
                        [f"/r{i % 3}/v1" for i in range(args.repeat)])
            print(f"upstream from an endpoint route: {_fmt(ep)}")
            docs = [f"doc:{rnd.randrange(args.docs):08x}" for _ in range(args.repeat)]
            down = _timed(store.downstream, docs)
            print(f"downstream document -> corpus versions -> every model version and endpoint: {_fmt(down)} "
                  f"({len(store.downstream(docs[0]).nodes)} artifacts for the first pick)")
            pairs = [(engines[i], engines[(i + 1) % len(engines)]) for i in range(min(10, len(engines)))]
            df = _timed(lambda ab: queries.diff(store, *ab), pairs)
            print(f"diff of two model versions (documents compared): {_fmt(df)}")
        finally:
            store.close()
            backend.stop()


def overhead_bench(corpus: Path, verdicts) -> None:
    import dagster as dg

    with tempfile.TemporaryDirectory(prefix="ossa-bench-linrun-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        env = {**os.environ, "DAGSTER_HOME": str(home), "OSSA_DATA_ROOT": str(Path(tmp) / "data"),
               "OSSA_CORPUS_ROOT": str(corpus)}
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ossa_assets.cli", "materialize"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"materialize failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "OSSA_DATA_ROOT", "OSSA_CORPUS_ROOT")})
        from ossa_assets.definitions import ASSET_KEYS
        from ossa_assets.lineage import recorder
        from resources import build_resources

        store = build_resources()["graph"].open()
        try:
            times = []
            for _ in range(3):
                t = time.perf_counter()
                stats = recorder.rebuild(dg.DagsterInstance.get(), store, ASSET_KEYS)
                times.append(time.perf_counter() - t)
            counts = store.counts()
        finally:
            store.close()
            subprocess.run([sys.executable, "-m", "ossa_assets.cli", "store", "stop"], cwd=ROOT, env=env,
                           capture_output=True)
        lin = statistics.median(times)
        print(f"\nwhole tiny graph: {wall:.1f}s ({proc.stdout.strip().splitlines()[-1]})")
        print(f"lineage writing replayed alone: median {lin:.2f}s over 3 ({stats.materializations} materializations, "
              f"{counts['nodes'].get('Document', 0)} documents, {sum(counts['nodes'].values())} nodes, "
              f"{sum(counts['edges'].values())} edges)")
        print(f"lineage / graph run: {lin / (wall - lin):.3%}")
        verdicts.at_most("lineage writing / the rest of the graph run", 100 * lin / (wall - lin), 2.0, " %")


def main() -> int:
    from verdict import Verdicts

    verdicts = Verdicts()
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--corpora", type=int, default=100)
    ap.add_argument("--per-corpus", type=int, default=2_000)
    ap.add_argument("--models", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--corpus", default=str(ROOT / "ossa_assets" / "corpora" / "sample"))
    args = ap.parse_args()
    query_bench(args, verdicts)
    if not args.skip_overhead:
        overhead_bench(Path(args.corpus).resolve(), verdicts)
    return verdicts.report()


if __name__ == "__main__":
    sys.exit(main())
