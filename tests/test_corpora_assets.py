"""The corpora stage under Dagster: sources as dynamic partitions, bad input quarantined and
counted, gates that block, the quality report, and the sources sensor."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import dagster as dg

from tests.conftest import copy_sample, curate_all, tiny_resources

BAD_FILES = {
    "openapi/broken/unclosed.yaml": ("openapi: 3.0.0\ninfo: {title: [x\n", "malformed_yaml"),
    "openapi/broken/truncated.json": ('{"openapi": "3.1.0", "paths": {', "malformed_json"),
    "openapi/broken/empty.yaml": ("", "empty"),
    "openapi/broken/blob.json": (bytes(range(256)) * 8, "binary"),
    "opcua/broken/mismatched.NodeSet2.xml": ("<UANodeSet><UAObject></UANodeSet>", "malformed_xml"),
}


def _md(result, node: str) -> dict:
    mat = result.asset_materializations_for_node(node)[0]
    return {k: v.value for k, v in mat.metadata.items()}


def test_bad_input_is_quarantined_and_counted(tmp_path, data_root):
    corpus = copy_sample(tmp_path / "corpus")
    for rel, (content, _) in BAD_FILES.items():
        p = corpus / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())

    instance = dg.DagsterInstance.ephemeral()
    runs = curate_all(instance, tiny_resources(data_root, corpus), ("api_spec", "industrial_protocol"))
    for domain, expected_invalid in (("api_spec", 4), ("industrial_protocol", 1)):
        (src,), corp = runs[domain]
        assert src.success and corp.success
        smd = _md(src, "corpora__source_documents")
        assert smd["files"] == smd["documents"] + smd["quarantined"] + smd["fragments"]
        md = _md(corp, "corpora__curated_corpus")
        assert md["invalid"] == expected_invalid
        art = corp.output_for_node("corpora__curated_corpus")
        with gzip.open(Path(art.path) / "quarantine.jsonl.gz", "rt") as f:
            got = {q["path"]: q["reason"] for q in map(json.loads, f)}
        for rel, (_, reason) in BAD_FILES.items():
            top, _, inner = rel.partition("/")
            if (top == "openapi") == (domain == "api_spec"):
                assert got[inner] == reason, (inner, got.get(inner))
        assert all(c.passed for c in corp.get_asset_check_evaluations())
        from datasets import load_from_disk

        docs = load_from_disk(str(Path(art.path) / "documents"))
        units = load_from_disk(str(Path(art.path) / "units"))
        assert set(docs) == set(units) == {"train", "validation", "test"}
        assert sum(len(docs[s]) for s in docs) == md["documents"]
        assert sum(len(units[s]) for s in units) > md["documents"]  # operations / nodes
        report = json.loads((Path(art.path) / "report.json").read_text())
        assert report["reasons"] == md["quarantine_reasons"]
        assert (Path(art.path) / "size_histogram.svg").read_text().startswith("<svg")
        # lineage: the corpus derives from its own domain's source snapshot only
        assert art.derived_from == [f"corpora/source_documents[{src.output_for_node('corpora__source_documents').partition}]"
                                    f"@{src.output_for_node('corpora__source_documents').data_version[:16]}"]


def test_gates_block_a_corpus_and_everything_downstream(tmp_path, data_root):
    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.finetune.assets import base_model

    corpus = copy_sample(tmp_path / "corpus")
    import shutil

    shutil.rmtree(corpus / "cicd")
    (corpus / "cicd").mkdir()
    (corpus / "cicd" / ".gitlab-ci.yml").write_text("stages: [build]\nbuild:\n  stage: build\n  script: [make]\n")
    instance = dg.DagsterInstance.ephemeral()
    resources = tiny_resources(data_root, corpus)
    runs = curate_all(instance, resources)
    (src,), corp = runs["devops_workflow"]
    assert src.success
    assert not corp.success  # a blocking check failed: nothing downstream in this run
    checks = {c.check_name: c for c in corp.get_asset_check_evaluations()}
    assert not checks["enough_valid_documents"].passed
    assert runs["api_spec"][1].success and runs["industrial_protocol"][1].success

    # ... nor in a later run: the base model refuses a corpus that failed its gates
    later = dg.materialize([base_model, curated_corpus.to_source_asset()], selection=[base_model],
                           resources=resources, instance=instance, raise_on_error=False)
    assert not later.success
    failure = next(e for e in later.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.message
    assert "failed their blocking checks" in message and "enough_valid_documents" in message


def test_a_backfill_can_recurate_one_source_alone(tmp_path, data_root):
    """Re-materializing one (domain, source) partition re-curates only the files that changed."""
    from ossa_assets.corpora.assets import source_documents

    corpus = copy_sample(tmp_path / "corpus")
    instance = dg.DagsterInstance.ephemeral()
    resources = tiny_resources(data_root, corpus)
    curate_all(instance, resources, ("devops_workflow",))
    wf = next((corpus / "cicd" / "github").rglob("*.yml"))
    wf.write_text(wf.read_text() + "\n# touched\n")
    key = dg.MultiPartitionKey({"domain": "devops_workflow", "source": "cicd"})
    again = dg.materialize([source_documents], partition_key=key, resources=resources, instance=instance)
    md = _md(again, "corpora__source_documents")
    assert md["curated_now"] == 1 and md["from_cache"] == md["files"] - 1


def test_sources_sensor_registers_partitions_and_requests_runs(tmp_path, data_root):
    from sensors.corpus_sources import corpus_sources_sensor

    corpus = copy_sample(tmp_path / "corpus")
    resources = tiny_resources(data_root, corpus)
    instance = dg.DagsterInstance.ephemeral()
    ctx = dg.build_sensor_context(instance=instance, cursor=None, resources={"corpus": resources["corpus"]})
    result = corpus_sources_sensor(ctx)
    (add,) = result.dynamic_partitions_requests
    assert sorted(add.partition_keys) == ["cicd", "opcua", "openapi"]
    keys = sorted(str(r.partition_key) for r in result.run_requests)
    assert keys == ["api_spec|openapi", "devops_workflow|cicd", "industrial_protocol|opcua"]
    cursor = ctx.cursor
    assert cursor
    instance.add_dynamic_partitions("corpus_source", list(add.partition_keys))
    again = corpus_sources_sensor(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                          resources={"corpus": resources["corpus"]}))
    assert isinstance(again, dg.SkipReason)


def test_secrets_stay_out_of_artifacts_and_the_event_log(tmp_path, data_root):
    """A CI file with credentials (and a broken one that echoes them in its parse error)."""
    key, password = "AKIAZ7Q3EXAMPLE4KEY9", "Tr0ub4dor&3-horse"
    corpus = copy_sample(tmp_path / "corpus")
    ci = next((corpus / "cicd" / "gitlab").rglob(".gitlab-ci.yml"))
    ci.write_text(ci.read_text() + f"\nvariables:\n  AWS_ACCESS_KEY_ID: {key}\n  DB_PASSWORD: \"{password}\"\n")
    (corpus / "cicd" / "leaky").mkdir()
    (corpus / "cicd" / "leaky" / ".gitlab-ci.yml").write_text(f"deploy:\n  script: [\"echo {key}\"\n")
    instance = dg.DagsterInstance.ephemeral()
    runs = curate_all(instance, tiny_resources(data_root, corpus), ("devops_workflow",))
    (src,), corp = runs["devops_workflow"]
    assert src.success and corp.success
    md = _md(corp, "corpora__curated_corpus")
    assert md["secrets_redacted"].get("aws_access_key_id", 0) >= 1
    for run in (src, corp):
        for record in instance.all_logs(run.run_id):
            text = json.dumps(record.to_json() if hasattr(record, "to_json") else str(record))
            assert key not in text and password not in text
    for p in data_root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".gz":
                data = gzip.decompress(data)
            assert key.encode() not in data and password.encode() not in data, p
