"""A servable deployment without running the graph: a real tiny Llama decoder exported to ONNX
(untrained: serving speed does not depend on what the weights learned), a local Qdrant store
with one collection per index embedded by the packaged MiniLM model, and the deployment state
that names them. Used by tests/serving and bench/bench_serving.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

TEXTS = ["openapi: 3.0.0\ninfo:\n  title: Pets\npaths:\n  /pets:\n    get: {}\n",
         "stages: [build, test]\nunit-tests:\n  stage: test\n  script: [pytest]\n",
         "<UANodeSet><UAVariable NodeId='ns=1;i=1' BrowseName='Temperature'/></UANodeSet>"] * 20

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 2, "max_position_embeddings": 64}


def tiny_arch() -> tuple[dict, int]:
    """The decoder `make run` builds (configs/tiny.yaml's base_model)."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "ossa_assets" / "configs" / "tiny.yaml").read_text())
    base = cfg["base_model"]
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings")
    return {k: base[k] for k in keys}, int(base["vocab_size"])


def build_deployment(root: Path, arch: dict | None = None, vocab_size: int = 400, int8: bool = False,
                     points: int = 3, texts: list[str] | None = None, kv: bool = True) -> SimpleNamespace:
    from ossa_assets.lib import embeddings
    from ossa_assets.lib.deployment import DeploymentState, RouteSpec, SearchIndex, SearchSpec, state_path, write_state
    from ossa_assets.lib.domains import REGISTRY
    from ossa_assets.lib.modeling import build_llama, train_tokenizer
    from ossa_assets.lib.onnx_export import export_onnx, export_onnx_kv, quantize_int8

    root = Path(root)
    engine = root / "engine"
    engine.mkdir(parents=True, exist_ok=True)
    arch = arch or SMALL
    corpus = texts or TEXTS
    tok = train_tokenizer(corpus, vocab_size=vocab_size, model_max_length=arch["max_position_embeddings"])
    model = build_llama(tok, arch, seed=0)
    model.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    tok.save_pretrained(engine)
    export_onnx(root / "hf", engine / "model.onnx")
    export_onnx_kv(root / "hf", engine / "model_kv.onnx")
    model_file, kv_file = "model.onnx", "model_kv.onnx"
    if int8:
        quantize_int8(engine / "model.onnx", engine / "model.int8.onnx")
        quantize_int8(engine / "model_kv.onnx", engine / "model_kv.int8.onnx")
        model_file, kv_file = "model.int8.onnx", "model_kv.int8.onnx"

    qpath = root / "qdrant"
    client = embeddings.open_qdrant(path=str(qpath))
    mini = embeddings.packaged_minilm_path()
    embedder = embeddings.load_embedder(mini, 128)
    ver = embeddings.model_version(mini)
    indexes = {}
    try:
        for kind in ("docs", "code", "capability"):
            coll = f"{kind}-v1"
            embeddings.ensure_collection(client, coll, embedder.get_embedding_dimension(),
                                         {"model_path": mini, "max_seq_length": 128, "model_version": ver,
                                          "model_lineage_id": f"embeddings/{kind}@1"})
            recs = [embeddings.IndexRecord(f"{t} #{i}" if i >= len(REGISTRY) else t,
                                           {"domain": REGISTRY[i % len(REGISTRY)].name, "source": "s",
                                            "unit_id": f"{kind}:{i}"})
                    for i, t in enumerate((corpus * (points // len(corpus) + 1))[:points])]
            embeddings.embed_and_upsert(client, embedder, coll, recs, ver)
            embeddings.point_alias(client, kind, coll)
            indexes[kind] = SearchIndex(collection=coll, lineage_id=f"embeddings/vector_index[{kind}]@1", alias=kind,
                                        model_version=ver)
    finally:
        client.close()
    routes = {d.route: RouteSpec(domain=d.name, model_version=f"{d.name}-v1", engine_path=str(engine),
                                 lineage_id=f"quantize/int8_model[{d.name}]@1", model_file=model_file,
                                 kv_model_file=kv_file if kv else None,
                                 engine="onnxruntime-int8" if int8 else "onnxruntime-fp32") for d in REGISTRY}
    state = DeploymentState(version="v1", lineage_id="serving/deployment@1", routes=routes,
                            search=SearchSpec(path=str(qpath), indexes=indexes))
    path = write_state(state_path(root), state)
    return SimpleNamespace(root=root, state=path, qdrant=qpath, engine=engine)
