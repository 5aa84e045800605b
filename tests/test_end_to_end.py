"""The whole graph, materialized through the real CLI (`ossa materialize`: persistent
instance, multiprocess executor, gpu pool), on tiny settings and real documents from
../shared/corpora (the shipped sample where that is absent), after three crashes: the command's
whole process group is killed with SIGKILL in curation, in a GPU-pool training step and in the
ONNX export, as a laptop that dies would, and `ossa materialize` is then run once more. The
tests look at what that last run left: every asset and check, no run left STARTED, no slot
held, no staging directory published, and the artifacts themselves: loss fell, the adapter
loads with peft, Qdrant finds a document, the int8 ONNX model runs, the endpoints answer over
HTTP, the lineage query returns the full chain and `ossa lineage check` finds no drift.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import chaos
from tests.conftest import ROOT, SAMPLE, SHARED_CORPORA

pytestmark = pytest.mark.slow

DOMAIN_DIRS = ("openapi", "opcua", "cicd")
SUFFIXES = {".yaml", ".yml", ".json", ".xml", ".md", ".rst"}


# where the three crashes land: (a step key prefix, `ossa materialize` arguments, seconds into the
# step): curation, a training step holding the gpu pool's slot, the ONNX export writing its file
CRASH_POINTS = [
    ("corpora__source_documents", (), 0.5),
    ("embeddings__embedding_model", (), 3.0),
    ("quantize__onnx_model", ("--job", "train_domain_models"), 1.5),
]

# how many files to take per domain: a third of the OpenAPI files are fragments, schemas or
# deliberately invalid fixtures, so it needs more to yield a few dozen documents
PER_DOMAIN = {"openapi": 120, "opcua": 45, "cicd": 45}


def _corpus_subset(dest: Path, max_bytes: int = 40_000) -> Path:
    """A deterministic spread of small real documents from every source of ../shared/corpora."""
    for sub in DOMAIN_DIRS:
        per_domain = PER_DOMAIN[sub]
        files = sorted(
            p for p in (SHARED_CORPORA / sub).rglob("*")
            if p.is_file() and p.suffix in SUFFIXES and p.stat().st_size <= max_bytes
        )
        step = max(1, len(files) // per_domain)
        for p in files[::step][:per_domain]:
            target = dest / sub / p.relative_to(SHARED_CORPORA / sub)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    return dest


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    if SHARED_CORPORA.is_dir():
        corpus = _corpus_subset(base / "corpus")
    else:  # a clean clone elsewhere: the sample the project ships
        corpus = SAMPLE
    home = base / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "OSSA_DATA_ROOT": str(base / "data"),
        "OSSA_CORPUS_ROOT": str(corpus),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    inst = chaos.instance_at(home)
    crashes = []
    for i, (step, args, settle) in enumerate(CRASH_POINTS):
        started = time.perf_counter()
        victim = chaos.start(env, *args, log=base / f"crash-{i}.log")
        hit = chaos.wait_for_step(inst, victim, step, timeout=900, settle=settle)
        chaos.kill_group(victim)
        crashes.append((hit, time.perf_counter() - started))
    t0 = time.perf_counter()  # from the last crash to a clean, completed re-run
    proc = subprocess.run(
        [sys.executable, "-m", "ossa_assets.cli", "materialize"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    ns = SimpleNamespace(
        base=base, home=home, data=base / "data", corpus=corpus, env=env, proc=proc,
        seconds=time.perf_counter() - t0, crashes=crashes,
    )
    yield ns
    subprocess.run([sys.executable, "-m", "ossa_assets.cli", "store", "stop"], cwd=ROOT, env=env, capture_output=True)


@pytest.fixture
def in_env(pipeline, monkeypatch):
    for k in ("DAGSTER_HOME", "OSSA_DATA_ROOT", "OSSA_CORPUS_ROOT"):
        monkeypatch.setenv(k, pipeline.env[k])
    return pipeline


def _latest(instance, key: list[str], partition: str | None = None):
    import dagster as dg

    res = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None),
        limit=1,
    )
    assert res.records, f"{key}[{partition}] was never materialized"
    return res.records[0].asset_materialization


def _recorded_materializations(instance) -> int:
    """Every materialization in the event log: the last run's 39 and what the killed runs had
    completed before they were killed."""
    import dagster as dg

    from ossa_assets.definitions import ASSET_KEYS

    return sum(len(instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=k), limit=10_000).records)
               for k in ASSET_KEYS)


def _md(mat) -> dict:
    return {k: v.value for k, v in mat.metadata.items()}


def test_whole_graph_materializes(pipeline):
    out = pipeline.proc.stdout + pipeline.proc.stderr
    assert pipeline.proc.returncode == 0, out[-6000:]
    last = pipeline.proc.stdout.strip().splitlines()[-1]
    # format validity is informational in the tiny profile (configs/tiny.yaml says why)
    # informational: the tiny profile's 3 reported-only gates, and registry_mirrors_release once per domain run
    assert re.fullmatch(r"materialized 39/39 assets, checks 30/30 passed \(\+ 6 informational, [3-6] passed\)",
                        last), out[-3000:]


def test_the_rerun_recovered_every_crash_and_left_nothing_behind(pipeline):
    import dagster as dg

    from ossa_assets.lib.artifacts import leftover_staging

    print(f"crashes at {[(step, round(t, 1)) for step, t in pipeline.crashes]}; "
          f"clean re-run of the whole graph {pipeline.seconds:.0f} s")
    assert [step for step, _ in pipeline.crashes] == [p[0] for p in CRASH_POINTS]
    assert pipeline.proc.returncode == 0
    assert pipeline.seconds < 900  # the re-run did not wait on a slot nobody would free
    inst = chaos.instance_at(pipeline.home)
    # each killed run was found and failed with the reason, by the next `ossa materialize`
    orphans = [r for r in inst.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
               if "is gone" in inst.all_logs(r.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1].message]
    assert len(orphans) == len(CRASH_POINTS), [r.job_name for r in orphans]
    assert "recovered " in pipeline.proc.stdout  # the last crash's run, recovered by the re-run
    assert not inst.get_runs(filters=dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING]))
    info = inst.event_log_storage.get_concurrency_info("gpu")
    assert not info.claimed_slots and not info.pending_steps
    # every manifest names a complete, published artifact; no staging dir is left or named
    manifests = sorted((pipeline.data / "manifests").rglob("*.json"))
    assert len(manifests) >= 39
    for m in manifests:
        path = json.loads(m.read_text())["path"]
        if path.startswith("/"):
            assert Path(path).exists() and ".tmp-" not in path, (m, path)
    assert leftover_staging(pipeline.data) == []


def test_fine_tuning_lowered_validation_loss(in_env):
    import dagster as dg

    instance = dg.DagsterInstance.get()
    for domain in ("api_spec", "industrial_protocol", "devops_workflow"):
        md = _md(_latest(instance, ["finetune", "domain_checkpoint"], domain))
        assert md["val_loss"] < md["untrained_val_loss"], (domain, md)
        assert md["registered_model"].startswith(f"ossa-{domain}-checkpoint v")


def test_training_is_tracked_and_registered_in_mlflow(in_env):
    from mlflow.tracking import MlflowClient

    db = Path(in_env.env["OSSA_DATA_ROOT"]) / "mlflow" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    versions = client.search_model_versions("name='ossa-api_spec-checkpoint'")
    assert versions
    run = client.get_run(versions[0].run_id)
    assert run.info.status == "FINISHED"
    assert float(run.data.params["max_steps"]) > 0
    assert "val_loss" in run.data.metrics and "train_loss" in run.data.metrics
    assert run.data.tags["dagster.partition"] == "api_spec"
    assert client.search_model_versions("name='ossa-api_spec-adapter'")


def test_adapter_loads_with_peft(in_env):
    import dagster as dg
    from peft import PeftConfig, PeftModel

    from ossa_assets.lib.modeling import load_causal_lm

    instance = dg.DagsterInstance.get()
    adapter = _md(_latest(instance, ["lora", "multitask_adapter"], "devops_workflow"))["ossa/path"]
    checkpoint = _md(_latest(instance, ["finetune", "domain_checkpoint"], "devops_workflow"))["ossa/path"]
    assert (Path(adapter) / "adapter_model.safetensors").is_file()
    cfg = PeftConfig.from_pretrained(adapter)
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (64, 128, 0.1)
    assert set(cfg.target_modules) == {"q_proj", "v_proj", "gate_proj"}
    model = PeftModel.from_pretrained(load_causal_lm(checkpoint), adapter)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_embedding_models_beat_their_base_and_indexes_are_live(in_env):
    import dagster as dg

    from ossa_assets.embeddings.config import EmbeddingEvalConfig
    from ossa_assets.lib import embeddings
    from ossa_assets.lib.curation import corpus as corpora

    instance = dg.DagsterInstance.get()
    tolerance = EmbeddingEvalConfig().max_regression
    gains = []
    for kind, dim in (("code", 768), ("docs", 1536), ("capability", 512)):
        ev = _md(_latest(instance, ["embeddings", "embedding_eval"], kind))
        # the profile's gate, which also allows one held-out query's worth (18 capability pairs)
        slack = tolerance + 1 / ev["heldout_pairs"]
        assert ev["recall_at_10"] >= ev["base_recall_at_10"] - slack, (kind, ev)
        assert ev["mrr"] >= ev["base_mrr"] - slack, (kind, ev)
        gains.append(ev["recall_at_10"] - ev["base_recall_at_10"])
        idx = _md(_latest(instance, ["embeddings", "vector_index"], kind))
        assert idx["dimension"] == dim and idx["alias"] == f"{kind}-live -> {idx['collection']}"
    assert sum(gains) > 0.1, gains  # trained on the corpus, the models find more than MiniLM does
    md = _md(_latest(instance, ["embeddings", "vector_index"], "docs"))
    corpus = _md(_latest(instance, ["corpora", "curated_corpus"], "industrial_protocol"))["ossa/path"]
    unit = corpora.load_units(corpus, "train")[0]
    client = embeddings.open_qdrant(path=str(Path(in_env.env["OSSA_DATA_ROOT"]) / "qdrant"))
    try:
        meta = embeddings.collection_metadata(client, "docs-live")
        embedder = embeddings.load_embedder(meta["model_path"], meta["max_seq_length"])
        text = embeddings.embedding_text(f"{unit['title']}\n{unit['text']}")
        hits = embeddings.search(client, embedder, "docs-live", text, limit=3)
        assert hits[0]["unit_id"] == unit["unit_id"] and hits[0]["doc_id"] == unit["doc_id"]
        assert hits[0]["domain"] == "industrial_protocol"
        assert client.count(md["collection"]).count == md["points"]
    finally:
        client.close()


def test_int8_onnx_model_runs_and_agrees(in_env):
    import dagster as dg
    import numpy as np

    from ossa_assets.lib.modeling import load_tokenizer
    from ossa_assets.lib.onnx_runtime import OnnxCausalLM

    instance = dg.DagsterInstance.get()
    md = _md(_latest(instance, ["quantize", "int8_model"], "api_spec"))
    assert md["top1_agreement"] >= 0.95
    assert md["int8_bytes"] < md["fp32_bytes"]
    engine_dir = Path(md["ossa/path"])
    tok = load_tokenizer(engine_dir)
    lm = OnnxCausalLM(engine_dir / "model.int8.onnx")
    ids = tok("openapi: 3.0.0\npaths:", add_special_tokens=False)["input_ids"]
    logits = lm.logits([ids])
    assert logits.shape == (1, len(ids), len(tok)) and np.isfinite(logits).all()
    assert len(lm.generate(ids, 5)) == 5


# -- serving over HTTP -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(pipeline):
    import uvicorn

    from ossa_serving import create_app

    state = pipeline.data / "serving" / "deployment.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from ossa_assets.lib.graph_store import open_graph_store

    # the lineage routes read the pipeline's embedded graph (the store `ossa materialize` synced)
    app = create_app(state, graph_factory=lambda: open_graph_store("embedded", data_dir=pipeline.data / "graph"))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(3600):  # start-up loads and warms every engine and embedder (ONNX export on first use)
        if srv.started:
            break
        time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", app=app, state=state)
    srv.should_exit = True
    t.join(timeout=10)


def test_endpoints_answer_over_http(server):
    import httpx

    from ossa_assets.lib.domains import ROUTES

    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/health").json()["status"] == "ok"
        models = c.get("/v1/models").json()
        assert sorted(m["route"] for m in models["models"]) == sorted(ROUTES)
        for route, domain in ROUTES.items():
            r = c.post(route, json={"prompt": "name: build\non:", "max_new_tokens": 6})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["domain"] == domain and body["completion_tokens"] >= 1
            assert body["lineage_id"].startswith(f"quantize/int8_model[{domain}]@")
            again = c.post(route, json={"prompt": "name: build\non:", "max_new_tokens": 6}).json()
            assert again["cached"] and again["completion"] == body["completion"]
        hits = c.post("/v1/search", json={"query": "OPC UA NodeSet variable", "limit": 3, "domain": "industrial_protocol"})
        assert hits.status_code == 200 and 1 <= len(hits.json()["hits"]) <= 3
        body = hits.json()
        assert all(h["domain"] == "industrial_protocol" for h in body["hits"])
        assert body["index"] == "docs" and body["collection"] == models["search"]["docs"]["collection"]
        assert body["lineage_id"] == models["search"]["docs"]["lineage_id"]
        assert body["lineage_id"].startswith("embeddings/vector_index[docs]@")
        # agent capability discovery: operations, methods and jobs, filtered by domain
        cap = c.post("/v1/search", json={"query": "run the unit tests", "index": "capability",
                                         "domain": "devops_workflow", "limit": 5}).json()
        assert cap["hits"] and all(h["domain"] == "devops_workflow" for h in cap["hits"])
        assert cap["collection"].startswith("capability-") and all(h["unit_id"] for h in cap["hits"])
        code = c.post("/v1/search", json={"query": "paths: get: responses", "index": "code", "limit": 2}).json()
        assert len(code["hits"]) == 2 and code["model_version"] == models["search"]["code"]["model_version"]


def test_every_answer_carries_a_lineage_id_that_resolves_upstream(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as c:
        gen = c.post("/devops-model/v1", json={"prompt": "stages:", "max_new_tokens": 4}).json()
        up = c.get("/v1/lineage/upstream", params={"id": gen["lineage_id"], "documents": 5})
        assert up.status_code == 200, up.text
        body = up.json()
        kinds = {n["kind"] for n in body["nodes"]}
        assert {"Adapter", "Checkpoint", "CorpusVersion", "BaseModel"} <= kinds
        assert body["documents"]["total"] > 0 and len(body["documents"]["sample"]) == 5
        # the multitask adapter learned from all three domains' corpora: their documents, by source
        assert set(body["documents"]["by_source"]) == {"openapi", "opcua", "cicd"}
        # the release that answered resolves too: its variants, each down to its documents
        rel = c.get("/v1/lineage/upstream", params={"id": gen["release"], "documents": 1}).json()
        assert rel["root"]["kind"] == "Release" and gen["lineage_id"] in {n["id"] for n in rel["nodes"]}
        assert rel["documents"]["total"] == body["documents"]["total"]

        hits = c.post("/v1/search", json={"query": "pipeline stages", "limit": 1}).json()
        up = c.get("/v1/lineage/upstream", params={"id": hits["lineage_id"], "documents": 0}).json()
        assert {"EmbeddingModel", "Dataset", "CorpusVersion"} <= {n["kind"] for n in up["nodes"]}

        doc = body["documents"]["sample"][0]["id"]
        down = c.get("/v1/lineage/downstream", params={"id": doc}).json()
        assert gen["lineage_id"] in {n["id"] for n in down["nodes"]}
        diff = c.get("/v1/lineage/diff", params={"a": gen["lineage_id"], "b": hits["lineage_id"]}).json()
        assert diff["changed"] and "documents" in diff

        missing = c.get("/v1/lineage/upstream", params={"id": "nope@0"})
        assert missing.status_code == 404 and "nothing in the lineage graph" in missing.json()["error"]
        assert c.get("/v1/lineage/upstream").status_code == 422
        no_prev = c.get("/v1/lineage/diff", params={"b": gen["lineage_id"]})
        assert no_prev.status_code == 404 and "no earlier version" in no_prev.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("POST", "/api-model/v1", {}, 422, "prompt"),
        ("POST", "/api-model/v1", {"prompt": ""}, 422, "prompt"),
        ("POST", "/api-model/v1", {"prompt": "x", "max_new_tokens": 100000}, 422, "max_new_tokens"),
        ("POST", "/api-model/v1", {"prompt": "x", "temperature": 5}, 422, "temperature"),
        ("POST", "/api-model/v1", "not json", 422, "invalid"),
        ("POST", "/v1/search", {"query": "x", "limit": 0}, 422, "limit"),
        ("POST", "/v1/search", {"query": "x", "index": "images"}, 422, "index"),
        ("GET", "/api-model/v1", None, 405, "Method Not Allowed"),
        ("POST", "/nope/v1", {"prompt": "x"}, 404, "Not Found"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(server, method, path, body, status, needle):
    import httpx

    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    r = httpx.request(method, server.url + path, timeout=30, **kwargs)
    assert r.status_code == status
    payload = r.json()
    assert needle in json.dumps(payload)
    assert "Traceback" not in r.text


def test_a_moved_release_is_picked_up_without_restart(server):
    """The server follows the release store the deployment names: a move (here a person's pin)
    goes live without a restart or a new deployment, no request fails during the swap, and a
    release naming a missing engine is refused while the route keeps serving."""
    import httpx

    from ossa_assets.lib import release as rl
    from ossa_assets.lib.deployment import read_state

    state = read_state(server.state)
    store = rl.open_store(state.release_store)
    route = "/api-model/v1"
    original = store.get(route).champion

    def served_version(until, seconds=60.0):
        """Ask until `until(answer)`: a new release loads in the background (engine processes
        start in seconds) while the old engines answer every request."""
        deadline = time.monotonic() + seconds
        while True:
            r = httpx.post(server.url + route, json={"prompt": "stages:", "max_new_tokens": 2}, timeout=30)
            assert r.status_code == 200, r.text  # never a failed request during the swap
            if until(r.json()) or time.monotonic() > deadline:
                return r.json()
            time.sleep(0.1)

    def pin(variant, reason):
        return rl.move(store, route, lambda cur: rl.pin(cur, route, variant, person="e2e", reason=reason))

    try:
        # serve the devops engine on the API route: a different model version goes live
        devops = store.get("/devops-model/v1").champion
        other = replace(devops, spec=replace(devops.spec, domain="api_spec"))
        moved = pin(other, "try the devops engine")
        got = served_version(lambda a: a["model_version"] == other.spec.model_version)
        assert got["model_version"] == other.spec.model_version and got["release"] == moved.lineage_id
        assert got["variant_role"] == "champion"

        # a release naming a missing engine is refused: the previous variant keeps serving
        broken = replace(other, name="api_spec-broken", spec=replace(other.spec, engine_path="/nonexistent",
                                                                      model_version="api_spec-broken"))
        pin(broken, "a bad copy")
        for _ in range(600):
            if httpx.get(server.url + "/ready").json()["release_errors"].get(route):
                break
            time.sleep(0.1)
        assert "does not exist" in httpx.get(server.url + "/ready").json()["release_errors"][route]
        assert served_version(lambda a: True)["model_version"] == other.spec.model_version  # not "broken"
    finally:
        pin(original, "restore the pipeline's champion")
        served_version(lambda a: a["model_version"] == original.spec.model_version)


# -- lineage -----------------------------------------------------------------------------------

CHAIN = {
    "quantize/int8_model[api_spec]",
    "quantize/onnx_model[api_spec]",
    "lora/multitask_adapter[api_spec]",
    "finetune/domain_checkpoint[api_spec]",
    "finetune/base_model",
    "corpora/curated_corpus[api_spec]",
    "corpora/source_documents[api_spec|openapi]",
}


def _asset_part(node_id: str) -> str:
    return node_id.split("@", 1)[0]


def _upstream_assets(store, route: str = "/api-model/v1") -> set[str]:
    from ossa_assets.lib.graph_store import queries

    root = queries.resolve(store, route)
    lin = store.upstream(root)
    return {_asset_part(n["id"]) for n in [lin.root, *lin.nodes] if "@" in n["id"]}


def test_lineage_upstream_from_endpoint_reaches_its_corpus(in_env):
    from ossa_assets.lib.curation import corpus as corpora
    from resources import build_resources

    store = build_resources()["graph"].open()
    try:
        assert CHAIN <= _upstream_assets(store)
        # the endpoint names what it serves
        ep = store.get_node("endpoint:/api-model/v1")
        assert ep["props"]["lineage_id"].startswith("quantize/int8_model[api_spec]@")
        # ... down to the documents and their sources, each document once: every corpus version
        # upstream (the multitask adapter and the tokenizer learned from all three domains)
        full = store.upstream(ep["props"]["lineage_id"])
        docs = {n["id"] for n in full.nodes if n["kind"] == "Document"}
        on_disk = {f"doc:{d['doc_id']}" for n in full.nodes if n["kind"] == "CorpusVersion"
                   for d in corpora.document_rows(n["props"]["path"])}
        assert docs == on_disk and {"source:openapi", "source:opcua", "source:cicd"} <= full.ids
        # a model is TRAINED_ON its data, DERIVED_FROM the rest; edges carry versions and time
        ckpt = next(n["id"] for n in full.nodes if n["kind"] == "Checkpoint")
        assert any(e[0] == ckpt and e[1] == "TRAINED_ON" for e in full.edges)
        summary = store.upstream(ep["props"]["lineage_id"], documents=3)
        assert summary.documents["total"] == len(docs) and set(summary.documents["by_source"]) == {"openapi", "opcua", "cicd"}
        assert len(summary.documents["sample"]) == 3 and not [n for n in summary.nodes if n["kind"] == "Document"]
        props = store.backend.read(
            "MATCH (a:Artifact {id: $id})-[e:TRAINED_ON]->() RETURN properties(e)", {"id": ckpt})[0][0]
        assert props["data_version"] and props["code_version"].startswith("0.1.0+") and props["at"] > 0
    finally:
        store.close()


def test_lineage_downstream_of_a_document_reaches_models_collections_and_endpoints(in_env):
    from resources import build_resources

    store = build_resources()["graph"].open()
    try:
        doc = store.find_nodes("Document", domain="api_spec")[0]
        impact = store.downstream(doc["id"])
        assets = {n["props"].get("asset_key") for n in impact.nodes}
        assert {"corpora/curated_corpus", "finetune/domain_checkpoint", "lora/multitask_adapter",
                "quantize/int8_model", "embeddings/embedding_pairs", "embeddings/embedding_model",
                "embeddings/vector_index", "serving/deployment"} <= assets
        assert "endpoint:/api-model/v1" in impact.ids
        # withdrawing it means retraining the tokenizer too: the base model learned from every corpus
        assert "finetune/base_model" in assets
        # a source's impact starts with its snapshot and reaches the same endpoints
        by_source = store.downstream("source:opcua")
        assert "endpoint:/protocol-model/v1" in by_source.ids
        assert any(n["kind"] == "SourceSnapshot" for n in by_source.nodes)
    finally:
        store.close()


def test_lineage_cli_prints_the_chain(pipeline):
    out = subprocess.run(
        [sys.executable, "-m", "ossa_assets.cli", "lineage", "upstream", "/api-model/v1"],
        cwd=ROOT, env=pipeline.env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for asset in CHAIN:
        assert asset in out.stdout, out.stdout
    assert "mlflow run" in out.stdout
    # a route answers for its release: the variants with their weights, then each one's chain
    head, first = out.stdout.splitlines()[:2]
    assert head == "endpoint /api-model/v1 follows:", head
    assert first.startswith("Release        serving/release[api_spec]@") and "champion api_spec-" in first, first

    by_key = subprocess.run(
        [sys.executable, "-m", "ossa_assets.cli", "lineage", "upstream", "lora/multitask_adapter",
         "--partition", "industrial_protocol", "--json"],
        cwd=ROOT, env=pipeline.env, capture_output=True, text=True, timeout=120,
    )
    assert by_key.returncode == 0, by_key.stderr[-3000:]
    data = json.loads(by_key.stdout)
    assert data["root"]["id"].startswith("lora/multitask_adapter[industrial_protocol]@")
    reached = {_asset_part(n["id"]) for n in data["nodes"]}
    assert {"finetune/domain_checkpoint[industrial_protocol]", "finetune/base_model",
            "corpora/curated_corpus[industrial_protocol]"} <= reached

    docs = subprocess.run(
        [sys.executable, "-m", "ossa_assets.cli", "lineage", "upstream", "/api-model/v1", "--documents", "2"],
        cwd=ROOT, env=pipeline.env, capture_output=True, text=True, timeout=120,
    )
    assert docs.returncode == 0 and "documents: " in docs.stdout and "more (--documents N" in docs.stdout

    diff = subprocess.run(
        [sys.executable, "-m", "ossa_assets.cli", "lineage", "diff", "quantize/int8_model", "--partition", "api_spec"],
        cwd=ROOT, env=pipeline.env, capture_output=True, text=True, timeout=120,
    )
    assert diff.returncode == 1 and "no earlier materialization" in diff.stderr  # one version so far

    missing = subprocess.run(
        [sys.executable, "-m", "ossa_assets.cli", "lineage", "upstream", "no/such_asset"],
        cwd=ROOT, env=pipeline.env, capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 1 and "nothing in the lineage graph matches" in missing.stderr


def test_lineage_check_finds_drift_and_rebuild_repairs_it(pipeline):
    def check():
        return subprocess.run([sys.executable, "-m", "ossa_assets.cli", "lineage", "check", "--json"],
                              cwd=ROOT, env=pipeline.env, capture_output=True, text=True, timeout=180)

    subprocess.run([sys.executable, "-m", "ossa_assets.cli", "lineage", "sync"], cwd=ROOT, env=pipeline.env,
                   capture_output=True, text=True, timeout=180, check=True)
    first = check()
    assert first.returncode == 0, first.stdout + first.stderr[-2000:]
    report = json.loads(first.stdout)
    assert report["drift"] is False and report["mlflow_checked"] and report["materializations"] >= 39

    from ossa_assets.lib.graph_store import open_graph_store

    store = open_graph_store("embedded", data_dir=pipeline.data / "graph")
    try:
        victim = store.find_nodes(asset_key="finetune/domain_checkpoint", partition="api_spec")[0]["id"]
        store.backend.write("MATCH (n:Artifact {id: $id}) DETACH DELETE n", {"id": victim})
        store.upsert_nodes([{"id": "stray@0", "kind": "Checkpoint", "storage_id": 10**9}])
    finally:
        store.close()
    drift = check()
    assert drift.returncode == 1
    report = json.loads(drift.stdout)
    assert report["missing_nodes"] == [victim] and report["unknown_nodes"] == ["stray@0"]
    assert any(e.endswith(f"-> {victim}") or e.startswith(victim) for e in report["missing_edges"])

    rebuilt = subprocess.run([sys.executable, "-m", "ossa_assets.cli", "lineage", "rebuild"],
                             cwd=ROOT, env=pipeline.env, capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert check().returncode == 0


def test_lineage_graph_rebuilds_identically_on_the_bolt_path(in_env, bolt_server):
    """The same event log replayed into a Bolt (Neo4j protocol) server gives the same chain."""
    import dagster as dg

    from ossa_assets.definitions import ASSET_KEYS
    from ossa_assets.lib.graph_store import open_graph_store
    from ossa_assets.lineage import recorder
    from resources import build_resources

    bolt = open_graph_store("bolt", uri=bolt_server.uri)
    embedded = build_resources()["graph"].open()
    try:
        instance = dg.DagsterInstance.get()
        stats = recorder.rebuild(instance, bolt, ASSET_KEYS)
        assert stats.materializations == _recorded_materializations(instance) >= 39
        assert stats.skipped_edges == 0
        assert _upstream_assets(bolt) == _upstream_assets(embedded)
        # not only the same chain: every node and edge, with every property, is the same
        (bolt_nodes, bolt_edges), (emb_nodes, emb_edges) = bolt.dump(), embedded.dump()
        assert len(bolt_nodes) > 100 and len(bolt_edges) > 200
        assert [n["id"] for n in bolt_nodes] == [n["id"] for n in emb_nodes]
        for got, want in zip(bolt_nodes, emb_nodes):
            assert _same(got, want), (got, want)
        assert [e[:3] for e in bolt_edges] == [e[:3] for e in emb_edges]
        for got, want in zip(bolt_edges, emb_edges):
            assert _same(got, want), (got, want)
        # replaying again adds nothing (idempotent)
        before = bolt.counts()
        recorder.sync(dg.DagsterInstance.get(), bolt, ASSET_KEYS, 0)
        assert bolt.counts() == before
    finally:
        bolt.close()
        embedded.close()
    assert bolt_server.alive()


def _same(a, b) -> bool:
    """Equal, floats to within 1e-5: the stores hold the same doubles, but FalkorDB's Bolt side
    writes them with 6 decimals and its native protocol with 15 significant digits (measured:
    0.888889 vs 0.888888888888889)."""
    import math

    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_lineage_sensor_records_and_advances_its_cursor(in_env, tmp_path):
    import dagster as dg

    from ossa_assets.definitions import defs
    from ossa_assets.lib.graph_store import EmbeddedFalkorDB
    from resources.graph import GraphStoreResource

    sensor = defs.resolve_sensor_def("lineage_sensor")
    graph = GraphStoreResource(backend="embedded", data_dir=str(tmp_path / "graph"))
    instance = dg.DagsterInstance.get()
    try:
        ctx = dg.build_sensor_context(instance=instance, cursor=None, resources={"graph": graph})
        first = sensor(ctx)
        recorded = _recorded_materializations(instance)
        assert recorded >= 39 and f"recorded {recorded} materializations" in first.skip_message
        cursor = int(ctx.cursor)
        assert cursor > 0
        store = graph.open()
        try:
            assert CHAIN <= _upstream_assets(store)
        finally:
            store.close()
        ctx2 = dg.build_sensor_context(instance=instance, cursor=str(cursor), resources={"graph": graph})
        second = sensor(ctx2)
        assert "recorded 0 materializations" in second.skip_message
        assert int(ctx2.cursor) == cursor
    finally:
        EmbeddedFalkorDB(tmp_path / "graph").stop()
