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


# One credential of each shape the scrubber knows, planted where curation keeps it: a job's
# `variables:` and `script:` of a valid GitLab CI file, an existing CI file's variables, and the
# `example:` of an Authorization header parameter in an OpenAPI spec. {name: (value, kind)}
PLANTED = {
    "aws_key": ("AKIAZ7Q3EXAMPLE4KEY9", "aws_access_key_id"),
    "password": ("Tr0ub4dor&3-horse", "assigned_secret"),
    "passphrase": ("velvet mango quartz lantern", "assigned_secret"),
    "short_password": ("k9!Zq", "assigned_secret"),
    "docker_login": ("Dl0gin-S3cret-77", "cli_password"),
    "bearer_header": ("b3ar3rT0k3nAbc123def456", "authorization_header"),
    "aws_configure": ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLE1", "aws_secret_access_key"),
    "env_suffix": ("9f8e7d6c5b4a3f2e1d0c", "assigned_secret"),
    "openapi_example": ("7f3e9a1c5b2d8e4f6a0b9c8d", "bearer_token"),
}
_V = {name: value for name, (value, _) in PLANTED.items()}
# what must not appear anywhere: each value, and each word of a passphrase (a rule that took only
# the first word would leave the rest)
NEEDLES = {**_V, **{f"passphrase[{i}]": w for i, w in enumerate(_V["passphrase"].split())}}
LEAKY_CI = f"""stages: [build, release]

variables:
  SMTP_PASSWORD: {_V["passphrase"]}
  REDIS_PASSWORD: "{_V["short_password"]}"
  DEPLOY_TOKEN_ENV: {_V["env_suffix"]}

build-image:
  stage: build
  image: docker:27.3
  services: [docker:27.3-dind]
  script:
    - docker login -u release-bot -p {_V["docker_login"]} registry.example.com
    - 'curl -fsS -H "Authorization: Bearer {_V["bearer_header"]}" https://builds.example.com/api/v2/start'
    - aws configure set aws_secret_access_key {_V["aws_configure"]} --profile release
    - docker build -t registry.example.com/leaky/app:$CI_COMMIT_SHORT_SHA .

publish-release:
  stage: release
  needs: [build-image]
  script:
    - aws s3 cp dist/ s3://releases-example/leaky/ --recursive --profile release
  rules:
    - if: $CI_COMMIT_TAG
"""


def _plant_openapi_example(corpus: Path) -> str:
    """An Authorization header parameter with an `example:` in a sample spec; its relpath."""
    spec_path = corpus / "openapi" / "services" / "parking.json"
    spec = json.loads(spec_path.read_text())
    op = spec["paths"]["/garages"]["get"]
    op.setdefault("parameters", []).append({
        "name": "Authorization", "in": "header", "required": False, "schema": {"type": "string"},
        "example": f"Bearer {_V['openapi_example']}",
    })
    spec_path.write_text(json.dumps(spec, indent=2))
    return "services/parking.json"


def _materialization_metadata(result) -> str:
    return json.dumps([{k: str(v.value) for k, v in e.materialization.metadata.items()}
                       for e in result.get_asset_materialization_events()])


def test_secrets_stay_out_of_artifacts_and_the_event_log(tmp_path, data_root):
    """One credential of each shape in kept CI/OpenAPI documents (and broken CI files, one whose
    lint error echoes some): each value is gone from the curated documents and units, the
    quarantine, the reports, the materialization metadata of every run (curation of the three
    domains, then the embedding pairs, whose metadata shows an example pair), the whole event log
    and every byte under the data root (MLflow's store lives there too, though no stage run here
    logs to it: the first that does trains a model). The documents that held the values were
    kept, with markers where the values were, so the test cannot pass by quarantining them."""
    from datasets import load_from_disk

    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.embeddings.assets import embedding_pairs

    corpus = copy_sample(tmp_path / "corpus")
    ci = next((corpus / "cicd" / "gitlab").rglob(".gitlab-ci.yml"))
    ci.write_text(ci.read_text() + f"\nvariables:\n  AWS_ACCESS_KEY_ID: {_V['aws_key']}\n"
                  f"  DB_PASSWORD: \"{_V['password']}\"\n")
    (corpus / "cicd" / "gitlab" / "leaky-release").mkdir()
    (corpus / "cicd" / "gitlab" / "leaky-release" / ".gitlab-ci.yml").write_text(LEAKY_CI)
    # broken files: a YAML error, and a lint error whose detail echoes the offending value
    (corpus / "cicd" / "leaky").mkdir()
    (corpus / "cicd" / "leaky" / ".gitlab-ci.yml").write_text(f"deploy:\n  script: [\"echo {_V['aws_key']}\"\n")
    (corpus / "cicd" / "leaky-lint").mkdir()
    (corpus / "cicd" / "leaky-lint" / ".gitlab-ci.yml").write_text(
        "stages: [deploy]\ndeploy:\n  stage: deploy\n  script: [make deploy]\n  rules:\n    - if: $CI_COMMIT_TAG\n"
        f"      when: \"docker login -p {_V['docker_login']} reg.example.com && echo {_V['aws_key']}\"\n")
    openapi_rel = _plant_openapi_example(corpus)

    instance = dg.DagsterInstance.ephemeral()
    resources = tiny_resources(data_root, corpus)
    runs = curate_all(instance, resources)
    results = []
    expected_kinds = {"devops_workflow": {k for n, (_, k) in PLANTED.items() if n != "openapi_example"},
                      "api_spec": {PLANTED["openapi_example"][1]}, "industrial_protocol": set()}
    kept = {}
    for domain, ((src,), corp) in runs.items():
        assert src.success and corp.success, domain
        results += [src, corp]
        md = _md(corp, "corpora__curated_corpus")
        assert expected_kinds[domain] <= set(md["secrets_redacted"]), (domain, md["secrets_redacted"])
        art = Path(corp.output_for_node("corpora__curated_corpus").path)
        docs = load_from_disk(str(art / "documents"))
        units = load_from_disk(str(art / "units"))
        for split in docs:
            kept.update({(domain, d["path"]): d for d in docs[split]})
            for row in (*docs[split], *units[split]):
                text = json.dumps(row, default=str)
                assert not [n for n, v in NEEDLES.items() if v in text], (domain, row.get("path"))
        with gzip.open(art / "quarantine.jsonl.gz", "rt") as f:
            quarantine = {q["path"]: q for q in map(json.loads, f)}
        assert not [n for n, v in NEEDLES.items() if v in json.dumps(quarantine)], domain
        if domain == "devops_workflow":
            lint = quarantine["leaky-lint/.gitlab-ci.yml"]
            assert lint["reason"] == "invalid_gitlab_ci" and "<REDACTED:cli_password>" in lint["detail"], lint
    # the documents holding the secrets were kept, with the markers where the values were
    leaky = kept[("devops_workflow", "gitlab/leaky-release/.gitlab-ci.yml")]["text"]
    for kind in expected_kinds["devops_workflow"] - {"aws_access_key_id"}:
        assert f"<REDACTED:{kind}>" in leaky, kind
    assert "aws configure set aws_secret_access_key <REDACTED:aws_secret_access_key>" in leaky
    appended = kept[("devops_workflow", str(ci.relative_to(corpus / "cicd")))]["text"]
    assert "AWS_ACCESS_KEY_ID: <REDACTED:aws_access_key_id>" in appended
    assert 'DB_PASSWORD: "<REDACTED:assigned_secret>"' in appended
    assert "Bearer <REDACTED:bearer_token>" in kept[("api_spec", openapi_rel)]["text"]

    # the embedding pairs' metadata holds an example pair drawn from the curated units
    pairs = dg.materialize([embedding_pairs, curated_corpus.to_source_asset()],
                           partition_key="capability", resources=resources, instance=instance)
    results.append(pairs)

    for run in results:
        assert not [n for n, v in NEEDLES.items() if v in _materialization_metadata(run)]
        for record in instance.all_logs(run.run_id):
            text = json.dumps(record.to_json() if hasattr(record, "to_json") else str(record))
            assert not [n for n, v in NEEDLES.items() if v in text]
    scanned = 0
    for p in data_root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".gz":
                data = gzip.decompress(data)
            assert not [n for n, v in NEEDLES.items() if v.encode() in data], p
            scanned += 1
    assert scanned

