"""The hourly real-time adapter: trains on the hour's new documents, warm-starts, no-ops when quiet."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import dagster as dg

from tests.conftest import copy_sample, curate_all, tiny_resources

HOUR = "2026-11-20-10:00"
NEXT = "2026-11-20-11:00"
LATER = "2026-11-20-13:00"


def _set_mtime(root: Path, when: dt.datetime, pattern: str) -> int:
    ts = when.timestamp()
    n = 0
    for p in root.rglob(pattern):
        if p.is_file():
            os.utime(p, (ts, ts))
            n += 1
    return n


def test_realtime_adapter_chain(tmp_path, data_root, monkeypatch):
    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.finetune.assets import base_model
    from ossa_assets.lora.assets import realtime_adapter

    corpus = copy_sample(tmp_path / "corpus")
    old = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    _set_mtime(corpus, old, "*")
    arrived = _set_mtime(corpus / "cicd" / "github", dt.datetime(2026, 11, 20, 10, 30, tzinfo=dt.timezone.utc), "*.yml")
    assert arrived > 5
    later = _set_mtime(corpus / "openapi" / "partners", dt.datetime(2026, 11, 20, 13, 15, tzinfo=dt.timezone.utc), "*")
    assert later > 0

    resources = tiny_resources(data_root, corpus)
    instance = dg.DagsterInstance.ephemeral()
    for srcs, corp in curate_all(instance, resources).values():
        assert corp.success and all(r.success for r in srcs)
    assert dg.materialize([base_model, curated_corpus.to_source_asset()], resources=resources, instance=instance,
                          selection=[base_model]).success

    def run(hour):
        res = dg.materialize(
            [realtime_adapter, base_model.to_source_asset()],
            partition_key=hour, resources=resources, instance=instance, selection=[realtime_adapter],
        )
        assert res.success
        mat = res.asset_materializations_for_node("lora__realtime_adapter")[0]
        return res.output_for_node("lora__realtime_adapter"), {k: v.value for k, v in mat.metadata.items()}

    # the hour's documents as curated per source: held-out test documents are never trained on
    from ossa_assets.corpora.config import CuratedCorpusConfig
    from ossa_assets.lib.curation.corpus import load_split_texts, split_for
    from ossa_assets.lib.curation.pipeline import load_source_result

    start = dt.datetime(2026, 11, 20, 10, tzinfo=dt.timezone.utc).timestamp()
    cfg = CuratedCorpusConfig()
    in_hour = [d for spec in resources["corpus"].specs()
               for d in load_source_result(Path(resources["store"].load_manifest(
                   dg.AssetKey(["corpora", "source_documents"]),
                   str(dg.MultiPartitionKey({"domain": spec.domain, "source": spec.name}))).path)).documents
               if start <= d.mtime < start + 3600]
    expected = sum(split_for(d.doc_id, cfg.validation_fraction, cfg.test_fraction) != "test" for d in in_hour)
    assert 0 < expected < len(in_hour) <= arrived  # at least one of the hour's documents is held out
    corpus_dir = resources["store"].load_manifest(dg.AssetKey(["corpora", "curated_corpus"]), "devops_workflow").path
    test_ids = {r["doc_id"] for r in load_split_texts(corpus_dir, "test")}
    assert test_ids & {d.doc_id for d in in_hour}, "the corpus holds the same documents out"

    first, md1 = run(HOUR)
    assert md1["outcome"] == "trained" and md1["new_documents"] == expected
    assert md1["warm_started_from"] == "cold start"
    assert (Path(first.path) / "adapter_model.safetensors").is_file()
    # quiet: the automation's second look at the same hour, on the same inputs, does not retrain
    # (a new data version here would mark every later hour stale)
    t0 = time.monotonic()
    again, md_again = run(HOUR)
    assert md_again["outcome"].startswith("unchanged: the same") and again.data_version == first.data_version
    assert again.path == first.path
    quick = time.monotonic() - t0
    # deterministic: the same inputs trained again from nothing give the same weights and version
    manifest = resources["store"].path("manifests", "lora", "realtime_adapter") / f"{HOUR}.json"
    manifest.unlink()
    t0 = time.monotonic()
    retrained, md_re = run(HOUR)
    assert md_re["outcome"] == "trained" and retrained.data_version == first.data_version
    assert quick < (time.monotonic() - t0) / 2, quick  # the unchanged hour really skipped training

    quiet, md2 = run(NEXT)
    assert md2["outcome"].startswith("no-op") and md2["new_documents"] == 0
    assert quiet.path == first.path and quiet.data_version == first.data_version
    assert first.lineage_id in quiet.derived_from  # the warm-start chain is recorded

    from ossa_assets.lib.training import PROBE_ENV

    monkeypatch.setenv(PROBE_ENV, str(tmp_path / "probe-later"))  # the weights training starts from
    warm, md3 = run(LATER)
    monkeypatch.delenv(PROBE_ENV)
    assert md3["outcome"] == "trained" and md3["warm_started_from"] == NEXT
    assert warm.data_version != first.data_version
    assert quiet.lineage_id in warm.derived_from
    # not only what the asset says of itself: the adapter tensors training started from are the
    # previous hour's (the quiet hour carries hour 10's file), and a cold start's would not be
    _assert_starts_from(tmp_path / "probe-later" / "start-0.safetensors", Path(first.path))

    # re-materializing an old hour with different weights makes every later hour stale, and the
    # sensor rebuilds the chain from the first stale hour
    from ossa_assets.lora.chain import stale_hours
    from sensors.new_documents import evaluate_new_documents

    assert stale_hours(instance) == []
    res = dg.materialize(
        [realtime_adapter, base_model.to_source_asset()], partition_key=HOUR, resources=resources,
        instance=instance, selection=[realtime_adapter],
        run_config={"ops": {"lora__realtime_adapter": {"config": {"seed": 7}}}},
    )
    assert res.output_for_node("lora__realtime_adapter").data_version != first.data_version
    assert stale_hours(instance) == [NEXT, LATER]
    requests, _, _ = evaluate_new_documents(instance, resources["corpus"], None, data_root / "cache")
    assert [(r.partition_key, r.tags["ossa/trigger"]) for r in requests] == [(NEXT, "stale_warm_start")]
    run(NEXT)
    assert stale_hours(instance) == [LATER]
    run(LATER)
    assert stale_hours(instance) == []

    # the held-out rule is the corpus's own: rebuilt with another test fraction, the hour's
    # documents are split with it (not with the default configuration)
    from ossa_assets.corpora.assets import source_documents
    from ossa_assets.lora.assets import hour_documents

    rebuilt = dg.materialize([curated_corpus, source_documents.to_source_asset()], selection=[curated_corpus],
                             partition_key="devops_workflow", resources=resources, instance=instance,
                             run_config={"ops": {"corpora__curated_corpus": {"config": {"test_fraction": 0.2}}}})
    assert rebuilt.success
    rows, _ = hour_documents(resources["store"], resources["corpus"], start, start + 3600)
    want = {d.doc_id for d in in_hour if split_for(d.doc_id, cfg.validation_fraction, 0.2) != "test"}
    assert {r["doc_id"] for r in rows} == want and len(want) < expected


def _assert_starts_from(probe: Path, adapter_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    start = load_file(str(probe))
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    # peft names the live adapter "default" inside the model; the saved file leaves the name out
    lora = {k.removeprefix("model/").replace(".default.", "."): v for k, v in start.items()
            if k.startswith("model/") and ".lora_" in k}
    assert saved and sorted(lora) == sorted(saved)
    for k, v in saved.items():
        assert torch.equal(lora[k], v), k
    # the warm start is not the cold initialisation (lora_B starts at zero there)
    assert any(k.endswith("lora_B.weight") and bool(v.abs().sum()) for k, v in saved.items())
