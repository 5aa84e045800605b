"""The corpora stage under Dagster: bad input is quarantined, the run succeeds, counts add up."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from tests.conftest import copy_sample, tiny_resources

BAD_FILES = {
    "openapi/broken/unclosed.yaml": ("openapi: 3.0.0\ninfo: {title: [x\n", "malformed_yaml"),
    "openapi/broken/truncated.json": ('{"openapi": "3.1.0", "paths": {', "malformed_json"),
    "openapi/broken/empty.yaml": ("", "empty"),
    "openapi/broken/blob.json": (bytes(range(256)) * 8, "binary"),
    "opcua/broken/mismatched.NodeSet2.xml": ("<UANodeSet><UAObject></UANodeSet>", "malformed_xml"),
}


def test_bad_input_is_quarantined_and_counted(tmp_path, data_root):
    from ossa_assets.corpora.assets import curated_corpus

    corpus = copy_sample(tmp_path / "corpus")
    for rel, (content, _) in BAD_FILES.items():
        p = corpus / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())

    instance = dg.DagsterInstance.ephemeral()
    for domain, expected in (("api_spec", 4), ("industrial_protocol", 1)):
        result = dg.materialize(
            [curated_corpus],
            partition_key=domain,
            resources=tiny_resources(data_root, corpus),
            instance=instance,
        )
        assert result.success
        mat = result.asset_materializations_for_node("corpora__curated_corpus")[0]
        md = {k: v.value for k, v in mat.metadata.items()}
        assert md["invalid"] == expected
        assert md["files_seen"] == md["documents"] + md["quarantined"]
        art = result.output_for_node("corpora__curated_corpus")
        quarantine = [json.loads(l) for l in (Path(art.path) / "quarantine.jsonl").read_text().splitlines()]
        got = {q["path"]: q["reason"] for q in quarantine}
        for rel, (_, reason) in BAD_FILES.items():
            top, _, inner = rel.partition("/")
            if (top == "openapi") == (domain == "api_spec"):
                assert got[inner] == reason, (inner, got.get(inner))
        assert all(q["reason"] for q in quarantine)
        (check,) = result.get_asset_check_evaluations()
        assert check.passed, check.description

        # the curated dataset is a real datasets.DatasetDict with both splits
        from datasets import load_from_disk

        dd = load_from_disk(str(Path(art.path) / "dataset"))
        assert set(dd) == {"train", "validation"}
        assert len(dd["train"]) + len(dd["validation"]) == md["documents"]


def test_check_blocks_when_too_few_documents(tmp_path, data_root):
    from ossa_assets.corpora.assets import curated_corpus

    corpus = tmp_path / "corpus"
    (corpus / "cicd").mkdir(parents=True)
    (corpus / "cicd" / ".gitlab-ci.yml").write_text("build:\n  script: [make]\n")
    result = dg.materialize(
        [curated_corpus],
        partition_key="devops_workflow",
        resources=tiny_resources(data_root, corpus),
        raise_on_error=False,
    )
    # the blocking check fails the step: nothing downstream may train on this corpus
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and "curated" in check.description
