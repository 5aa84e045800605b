"""Time the whole graph, and its orchestration overhead against the bare library.

Two measurements in one run, on the same corpus and the active profile (tiny by default):
  bare   the stage library calls in one process, in the graph's order (curate -> base ->
         embeddings -> finetune -> adapter -> merge/export/quantize), no Dagster
  graph  `ossa materialize` in a fresh instance: persistent SQLite instance, multiprocess
         executor, gpu pool, MLflow tracking, lineage sync
and prints wall times, per-job times and the ratio graph/bare, with the verdict on the tiny
graph's target: `ossa materialize` of the whole graph within 3 minutes on 2 cores. Repeat with
--repeat N for medians (each repetition takes minutes on 2 cores).

  python bench/bench_graph.py [--corpus DIR] [--repeat N]

Each target is printed as `TARGET <what>: <target>; measured <x> -> MET | MISSED` (bench/verdict.py);
the bench exits 1 if any target is MISSED.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOMAIN_DIRS = {"api_spec": "openapi", "industrial_protocol": "opcua", "devops_workflow": "cicd"}


def bare(corpus: Path, work: Path) -> dict[str, float]:
    """The graph's computations as plain function calls (the orchestration-free baseline)."""
    from ossa_assets.corpora.config import CuratedCorpusConfig, SourceCurationConfig
    from ossa_assets.embeddings.assets import index_records, recall_queries
    from ossa_assets.embeddings.config import EmbeddingModelConfig, VectorIndexConfig
    from ossa_assets.finetune.config import BaseModelConfig, FinetuneConfig, TokenizeConfig
    from ossa_assets.lib import embedding_models, embeddings, finetune, lora, onnx_export, onnx_runtime, retrieval_eval
    from ossa_assets.lib.curation import corpus as corpus_lib
    from ossa_assets.lib.curation import pipeline
    from ossa_assets.lib.curation.common import Limits
    from ossa_assets.lib.curation.sources import SourceSpec, list_files
    from ossa_assets.lib.modeling import DOMAIN_TOKENS, load_tokenizer
    from ossa_assets.lib.training import TrainSettings, pack_blocks
    from ossa_assets.lora.config import AdapterConfig
    from ossa_assets.quantize.config import QuantizeConfig

    times: dict[str, float] = {}
    t = time.perf_counter()
    cc, sc = CuratedCorpusConfig(), SourceCurationConfig()
    settings = pipeline.CurationSettings(limits=Limits(max_bytes=sc.max_document_bytes), min_bytes=sc.min_bytes,
                                         prose_languages=tuple(sc.prose_languages))
    curated = {}
    for domain, sub in DOMAIN_DIRS.items():
        spec = SourceSpec(name=sub, domain=domain, kind="local", path=str(corpus / sub))
        src = pipeline.curate_source(spec, list_files(spec, work), _fresh(work / "cache" / sub), settings)
        res = corpus_lib.assemble(domain, [src], validation_fraction=cc.validation_fraction,
                                  test_fraction=cc.test_fraction, near_dup_threshold=cc.near_duplicate_threshold,
                                  config={})
        corpus_lib.save_corpus(res, _fresh(work / "corpus" / domain))
        curated[domain] = res
    times["curate"] = time.perf_counter() - t

    t = time.perf_counter()
    bc = BaseModelConfig()
    texts = [d.text for r in curated.values() for d in r.documents if r.splits[d.doc_id] == "train"]
    arch = {k: getattr(bc, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads", "num_key_value_heads", "max_position_embeddings")}
    base_dir = _fresh(work / "base")
    finetune.build_base(base_dir, texts, pretrained_path=None, vocab_size=bc.vocab_size, arch=arch,
                        tokenizer_max_chars=bc.tokenizer_max_chars, seed=bc.seed)
    times["base_model"] = time.perf_counter() - t

    # embeddings: pairs -> model -> eval vs base -> index + recall, per model (index_records and
    # recall_queries are the asset module's own plain functions)
    ec, vc = EmbeddingModelConfig(), VectorIndexConfig()
    corpora = {d: SimpleNamespace(path=str(work / "corpus" / d), data_version="bench") for d in curated}
    units = {s: [u for d in curated for u in corpus_lib.load_units(work / "corpus" / d, s)]
             for s in ("train", "validation", "test")}
    for kind in embedding_models.KINDS:
        t = time.perf_counter()
        train = embedding_models.mine_pairs(kind, units["train"])
        heldout = embedding_models.mine_pairs(kind, units["validation"] + units["test"])
        model_dir = _fresh(work / "emb" / kind)
        embedding_models.train_embedding_model(
            kind, embeddings.packaged_minilm_path(), train, model_dir / "m",
            embedding_models.EmbedTrainSettings(ec.max_seq_length, ec.batch_size, ec.learning_rate, ec.max_steps,
                                                ec.epochs, ec.warmup_ratio, ec.seed), model_dir / "work")
        model = embeddings.load_embedder(str(model_dir / "m"), ec.max_seq_length)
        k = embedding_models.KINDS[kind]
        retrieval_eval.evaluate_retrieval(model, heldout, k.matryoshka_dims)
        retrieval_eval.evaluate_retrieval(embeddings.load_embedder(None, ec.max_seq_length), heldout, (None,))
        records = index_records(kind, corpora)
        client = embeddings.open_qdrant(path=str(_fresh(work / "qdrant" / kind)))
        embeddings.sync_collection(client, model, kind, records, "bench", batch_size=vc.batch_size)
        embeddings.collection_recall(client, model, kind, recall_queries(kind, heldout, records, "bench",
                                                                          vc.recall_queries))
        embeddings.point_alias(client, k.alias, kind)
        client.close()
        times[f"embeddings[{kind}]"] = time.perf_counter() - t

    fc, tc, ac, qc = FinetuneConfig(), TokenizeConfig(), AdapterConfig(), QuantizeConfig()
    train = {d: [x.text for x in r.documents if r.splits[x.doc_id] == "train"] for d, r in curated.items()}
    val = {d: [x.text for x in r.documents if r.splits[x.doc_id] == "validation"] for d, r in curated.items()}
    for domain in DOMAIN_DIRS:
        t = time.perf_counter()
        ck = work / "ck" / domain
        tokenized = _fresh(work / "tok" / domain)
        finetune.tokenize_corpus(base_dir, {"train": train[domain], "validation": val[domain]}, domain,
                                 tokenized / "t", seq_len=tc.seq_len, max_eval_blocks=tc.max_eval_blocks)
        finetune.finetune_domain(
            base_dir, tokenized / "t", domain, _fresh(ck),
            settings=TrainSettings(fc.max_steps, fc.batch_size, fc.learning_rate, fc.grad_accum, seed=fc.seed),
            work_dir=_fresh(work / "trainer"),
        )
        ad = work / "ad" / domain
        weights = {d: ac.own_domain_weight if d == domain else ac.other_domain_weight for d in train}
        lora.train_adapter(
            ck, train, weights, val[domain], domain, _fresh(ad),
            lora=lora.LoraSettings(ac.r, ac.alpha, ac.dropout, tuple(ac.target_modules)), seq_len=ac.seq_len,
            settings=TrainSettings(ac.max_steps, ac.batch_size, ac.learning_rate, ac.grad_accum, seed=ac.seed),
            mixture_blocks=ac.max_steps * ac.batch_size * ac.grad_accum, max_eval_blocks=ac.max_eval_blocks,
            work_dir=_fresh(work / "trainer"),
        )
        q = _fresh(work / "q" / domain)
        onnx_export.merge_adapter(ck, ad, q / "merged")
        onnx_export.export_onnx(q / "merged", q / "model.onnx")
        onnx_export.quantize_int8(q / "model.onnx", q / "model.int8.onnx", per_channel=qc.per_channel)
        tok = load_tokenizer(q / "merged")
        blocks = pack_blocks(tok, val[domain], qc.eval_seq_len, DOMAIN_TOKENS[domain], max_blocks=qc.eval_blocks)
        onnx_runtime.top1_agreement(q / "merged", q / "model.int8.onnx", blocks)
        times[f"domain[{domain}]"] = time.perf_counter() - t
    return times


def _fresh(p: Path) -> Path:
    shutil.rmtree(p, ignore_errors=True)
    p.mkdir(parents=True)
    return p


def graph(corpus: Path, work: Path) -> tuple[float, dict[str, float], str]:
    home = _fresh(work / "dagster_home")
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "OSSA_DATA_ROOT": str(_fresh(work / "data")),
           "OSSA_CORPUS_ROOT": str(corpus)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ossa_assets.cli", "materialize"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    subprocess.run([sys.executable, "-m", "ossa_assets.cli", "store", "stop"], cwd=ROOT, env=env, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"ossa materialize failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    runs = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+): ok in ([0-9.]+)s", proc.stdout, re.M)}
    return wall, runs, proc.stdout.strip().splitlines()[-1]


GRAPH_TARGET_S = 180.0  # the tiny graph, materialized end to end, on a 2-core machine


def main() -> int:
    from verdict import Verdicts

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT / "ossa_assets" / "corpora" / "sample"))
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    corpus = Path(args.corpus).resolve()
    bare_walls, graph_walls = [], []
    with tempfile.TemporaryDirectory(prefix="ossa-bench-") as tmp:
        for i in range(args.repeat):
            t = time.perf_counter()
            stages = bare(corpus, Path(tmp) / "bare")
            bare_walls.append(time.perf_counter() - t)
            wall, runs, summary = graph(corpus, Path(tmp) / "graph")
            graph_walls.append(wall)
            print(f"[{i + 1}/{args.repeat}] bare {bare_walls[-1]:.1f}s {_fmt(stages)}")
            print(f"[{i + 1}/{args.repeat}] graph {wall:.1f}s {_fmt(runs)} -> {summary}")
    b, g = statistics.median(bare_walls), statistics.median(graph_walls)
    print(f"\ncorpus: {corpus}")
    print(f"bare library pipeline (baseline): median {b:.1f}s over {len(bare_walls)}")
    print(f"ossa materialize (whole graph):   median {g:.1f}s over {len(graph_walls)}")
    print(f"ratio graph/bare: {g / b:.2f}  (orchestration, tracking, lineage and process overhead)")
    verdicts = Verdicts()
    verdicts.at_most(f"ossa materialize, whole tiny graph (median of {len(graph_walls)})", g, GRAPH_TARGET_S, " s")
    return verdicts.report()


def _fmt(d: dict[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:.1f}s" for k, v in d.items()) + ")"


if __name__ == "__main__":
    sys.exit(main())
