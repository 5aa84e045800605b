"""Source kinds, incremental curation, fragments, secrets, duplicates and splits — no Dagster."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ossa_assets.lib.curation import corpus, pipeline
from ossa_assets.lib.curation.sources import SourceSpec, list_files, load_sources
from ossa_assets.lib.domains import DOMAINS

SAMPLE = Path(__file__).resolve().parents[2] / "ossa_assets" / "corpora" / "sample"
SETTINGS = pipeline.CurationSettings()


def _curate(spec: SourceSpec, tmp: Path) -> pipeline.SourceResult:
    return pipeline.curate_source(spec, list_files(spec, tmp / "git"), tmp / "cache", SETTINGS)


def _local(name: str, domain: str, path: Path, **kw) -> SourceSpec:
    return SourceSpec(name=name, domain=domain, kind="local", path=str(path), **kw)


# -- source kinds --------------------------------------------------------------------------------


def test_local_source_walks_dot_folders_and_applies_globs(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(SAMPLE / "cicd", root)
    files = [f.relpath for f in list_files(_local("c", "devops_workflow", root), tmp_path)]
    assert any("/.github/workflows/" in f for f in files)
    assert any(f.endswith(".gitlab-ci.yml") for f in files)
    only_gl = list_files(_local("c", "devops_workflow", root, include=("**/.gitlab-ci.yml",)), tmp_path)
    assert only_gl and all(f.relpath.endswith(".gitlab-ci.yml") for f in only_gl)
    no_gh = list_files(_local("c", "devops_workflow", root, exclude=("github/**",)), tmp_path)
    assert not any(f.relpath.startswith("github/") for f in no_gh)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()


def test_git_source_clones_into_a_cache_and_follows_refs(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(SAMPLE / "cicd" / "gitlab", repo)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "new-project").mkdir()
    (repo / "new-project" / ".gitlab-ci.yml").write_text("build:\n  script: [make]\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "two")

    main = SourceSpec(name="g", domain="devops_workflow", kind="git", url=str(repo), ref="main")
    at_main = {f.relpath for f in list_files(main, tmp_path / "cache")}
    assert "new-project/.gitlab-ci.yml" in at_main
    pinned = SourceSpec(name="g", domain="devops_workflow", kind="git", url=str(repo), ref=first)
    at_first = {f.relpath for f in list_files(pinned, tmp_path / "cache")}
    assert at_first == at_main - {"new-project/.gitlab-ci.yml"}
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one cached clone, reused
    with pytest.raises(RuntimeError, match="not found"):
        list_files(SourceSpec(name="g", domain="devops_workflow", kind="git", url=str(repo), ref="nope"),
                   tmp_path / "cache")


def test_record_sources_hf_dataset_jsonl_parquet(tmp_path):
    from datasets import Dataset

    rows = [{"path": f"specs/s{i}", "text": (SAMPLE / "openapi" / p).read_text()}
            for i, p in enumerate(sorted(x.relative_to(SAMPLE / "openapi").as_posix()
                                         for x in (SAMPLE / "openapi").rglob("*.yaml"))[:3])]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "recs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "recs.parquet")
    for kind, path in (("hf_dataset", tmp_path / "hf"), ("jsonl", tmp_path / "recs.jsonl"),
                       ("parquet", tmp_path / "recs.parquet")):
        spec = SourceSpec(name=kind.replace("_", "-"), domain="api_spec", kind=kind, path=str(path), suffix=".yaml")
        files = list_files(spec, tmp_path)
        assert [f.relpath for f in files] == ["specs/s0.yaml", "specs/s1.yaml", "specs/s2.yaml"], kind
        result = pipeline.curate_source(spec, files, tmp_path / f"cache-{kind}", SETTINGS)
        assert len(result.documents) == 3 and all(d.format == "openapi" for d in result.documents), kind


def test_fsspec_source(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in sorted((SAMPLE / "cicd" / "github").rglob("*.yml"))[:4]:
        fs.pipe(f"/ossa-test/{p.relative_to(SAMPLE / 'cicd').as_posix()}", p.read_bytes())
    spec = SourceSpec(name="mem", domain="devops_workflow", kind="fsspec", url="memory://ossa-test")
    files = list_files(spec, tmp_path)
    assert len(files) == 4 and all("/.github/workflows/" in f.relpath for f in files)
    result = pipeline.curate_source(spec, files, tmp_path / "cache", SETTINGS)
    assert len(result.documents) == 4


def test_sources_yaml_is_validated(tmp_path, monkeypatch):
    good = tmp_path / "s.yaml"
    good.write_text("sources:\n  - {name: a, domain: api_spec, kind: local, path: '${ROOT_X}/openapi'}\n")
    monkeypatch.setenv("ROOT_X", "/data")
    (spec,) = load_sources(good, DOMAINS)
    assert spec.path == "/data/openapi"
    for body, msg in [
        ("sources: []", "non-empty"),
        ("sources:\n  - {name: a, domain: nope, kind: local, path: x}", "domain"),
        ("sources:\n  - {name: a, domain: api_spec, kind: ftp, path: x}", "kind"),
        ("sources:\n  - {name: 'A B', domain: api_spec, kind: local, path: x}", "name"),
        ("sources:\n  - {name: a, domain: api_spec, kind: git}", "url"),
        ("sources:\n  - {name: a, domain: api_spec, kind: local, path: x, colour: red}", "unknown keys"),
        ("sources:\n  - {name: a, domain: api_spec, kind: local, path: '${UNSET_VAR_Q}'}", "not set"),
        ("sources:\n  - {name: a, domain: api_spec, kind: local, path: x}\n  - {name: a, domain: api_spec, kind: local, path: y}", "duplicate"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(body)
        with pytest.raises(ValueError, match=msg):
            load_sources(bad, DOMAINS)


# -- incremental -----------------------------------------------------------------------------------


def test_only_changed_files_are_recurated(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(SAMPLE / "cicd", root)
    spec = _local("c", "devops_workflow", root)
    first = _curate(spec, tmp_path)
    n = first.files_seen
    assert first.recomputed == n and first.from_cache == 0
    again = _curate(spec, tmp_path)
    assert again.recomputed == 0 and again.from_cache == n
    assert [d.doc_id for d in again.documents] == [d.doc_id for d in first.documents]

    target = next(root.rglob(".gitlab-ci.yml"))
    target.write_text(target.read_text() + "\nextra-job:\n  stage: .pre\n  script: [echo more]\n")
    (root / "added" / ".github" / "workflows").mkdir(parents=True)
    (root / "added" / ".github" / "workflows" / "ci.yml").write_text(
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make test\n")
    third = _curate(spec, tmp_path)
    assert third.recomputed == 2 and third.from_cache == n - 1
    assert len(third.documents) == len(first.documents) + 1


def test_multi_file_spec_fragment_change_recurates_its_root(tmp_path):
    root = tmp_path / "api"
    (root / "schemas").mkdir(parents=True)
    (root / "openapi.yaml").write_text(
        "openapi: 3.0.3\ninfo: {title: Pets, version: '1'}\npaths:\n  /pets:\n    get:\n"
        "      summary: List pets\n      responses:\n        '200':\n          description: ok\n"
        "          content:\n            application/json:\n              schema:\n"
        "                $ref: './schemas/pet.yaml'\n")
    (root / "schemas" / "pet.yaml").write_text("type: object\nproperties:\n  name: {type: string}\n")
    spec = _local("api", "api_spec", root)
    first = _curate(spec, tmp_path)
    assert [d.path for d in first.documents] == ["openapi.yaml"]
    assert first.fragments == ["schemas/pet.yaml"]  # part of the spec, not quarantined
    assert not first.quarantined
    (root / "schemas" / "pet.yaml").write_text("type: object\nproperties:\n  tag: {type: string}\n")
    second = _curate(spec, tmp_path)
    assert second.recomputed == 2  # the fragment and the root that read it
    assert "tag" in second.documents[0].text and "tag" not in first.documents[0].text


# -- secrets, duplicates, splits ---------------------------------------------------------------------

AWS_KEY = "AKIAZ7Q3EXAMPLE4KEY9"
PASSWORD = "Tr0ub4dor&3-horse"


def test_secrets_never_reach_any_output(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(SAMPLE / "cicd" / "gitlab", root)
    ci = next(root.rglob(".gitlab-ci.yml"))
    ci.write_text(ci.read_text() + f"\nvariables:\n  AWS_ACCESS_KEY_ID: {AWS_KEY}\n  DB_PASSWORD: \"{PASSWORD}\"\n")
    (root / "broken").mkdir()
    (root / "broken" / ".gitlab-ci.yml").write_text(f"deploy:\n  script: [\"echo {AWS_KEY}\"\n")  # malformed
    spec = _local("g", "devops_workflow", root)
    result = _curate(spec, tmp_path)
    assert result.secrets.get("aws_access_key_id", 0) >= 1 and result.secrets.get("assigned_secret", 0) >= 1
    out = tmp_path / "out"
    out.mkdir()
    pipeline.save_source_result(result, out)
    merged = corpus.assemble("devops_workflow", [result], validation_fraction=0.2, test_fraction=0.1,
                             near_dup_threshold=0.85, config={})
    corpus.save_corpus(merged, tmp_path / "corpus")
    for p in [*out.rglob("*"), *(tmp_path / "corpus").rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if p.is_file():
            data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            assert AWS_KEY.encode() not in data and PASSWORD.encode() not in data, p


def test_near_duplicates_across_sources_are_removed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    wf = next((SAMPLE / "cicd" / "github").rglob("*.yml"))
    for root in (a, b):
        (root / ".github" / "workflows").mkdir(parents=True)
    (a / ".github" / "workflows" / "ci.yml").write_text(wf.read_text())
    (b / ".github" / "workflows" / "ci.yml").write_text(wf.read_text().replace("\n", "\n", 1) + "# vendored copy\n")
    ra, rb = _curate(_local("a", "devops_workflow", a), tmp_path), _curate(_local("b", "devops_workflow", b), tmp_path)
    merged = corpus.assemble("devops_workflow", [ra, rb], validation_fraction=0.1, test_fraction=0.0,
                             near_dup_threshold=0.85, config={})
    assert [d.source for d in merged.documents] == ["a"]
    assert [(q.source, q.reason) for q in merged.quarantined] == [("b", "near_duplicate")]
    assert merged.report["near_duplicates"] == 1 and merged.report["duplicate_rate"] == 0.5


def test_split_is_deterministic_and_stable():
    import hashlib

    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    splits = {i: corpus.split_for(i, 0.1, 0.05) for i in ids}
    assert splits == {i: corpus.split_for(i, 0.1, 0.05) for i in ids}
    share = {s: sum(v == s for v in splits.values()) / len(ids) for s in corpus.SPLITS}
    assert 0.03 < share["test"] < 0.07 and 0.07 < share["validation"] < 0.13


def test_an_empty_split_still_loads(tmp_path):
    """datasets writes an empty split as zero shards unless told otherwise; it must load back."""
    root = tmp_path / "src"
    (root / "p" / ".github" / "workflows").mkdir(parents=True)
    (root / "p" / ".github" / "workflows" / "ci.yml").write_text(
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make test\n")
    result = _curate(_local("one", "devops_workflow", root), tmp_path)
    merged = corpus.assemble("devops_workflow", [result], validation_fraction=0.1, test_fraction=0.05,
                             near_dup_threshold=0.85, config={})
    corpus.save_corpus(merged, tmp_path / "out")
    rows = {s: corpus.load_split_texts(tmp_path / "out", s) for s in corpus.SPLITS}
    assert sum(len(r) for r in rows.values()) == 1 and sum(not r for r in rows.values()) == 2
    assert sum(len(corpus.load_units(tmp_path / "out", s)) for s in corpus.SPLITS) == 1


def test_prose_language_heuristic():
    en = "The server publishes the data set to the broker when the writer group is enabled. " * 5
    de = "Der Server veröffentlicht die Daten und die Gruppe ist nicht aktiv mit den Werten. " * 5
    zh = "服务器将数据集发布到代理，当写入组启用时。这是一个测试文档，用于检查语言。" * 5
    code = ".. code-block:: c\n\n    UA_EventFilter filter;\n    UA_EventFilter_init(&filter);\n" * 8
    assert [pipeline.prose_language(t) for t in (en, de, zh, code, "too short")] == ["en", "other", "other", "code", "und"]


# -- a GitLab pipeline split over included files, as large projects write them ------------------

_GITLAB_PROJECT = {
    ".gitlab-ci.yml": """
        include:
          - local: /ci/templates.yml
          - local: ci/jobs.yml
          - template: Security/SAST.gitlab-ci.yml
          - component: gitlab.com/components/secret-detection/secret-detection@1.0
        stages: [build, test]
        """,
    # hidden templates only: alone it has no jobs
    "ci/templates.yml": """
        .rules:mr:
          rules:
            - if: $CI_PIPELINE_SOURCE == "merge_request_event"
        .docker:
          image: docker:24
        .scripts:
          test: [make test]
        """,
    # jobs extending the sibling file's templates; a root-relative include of its own
    "ci/jobs.yml": """
        include:
          - local: /ci/more.yml
        build:
          extends: [.docker, .rules:mr]
          stage: build
          script: [docker build .]
        """,
    "ci/more.yml": """
        .deep:
          extends: .docker
          before_script: [echo deep]
        unit:
          extends: .deep
          stage: test
          script: !reference [.scripts, test]
        sast:
          variables:
            SAST_EXCLUDED_PATHS: spec
        """,
}


def _write(root: Path, files: dict[str, str]) -> None:
    import textwrap

    for rel, body in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(body))


def test_a_gitlab_pipeline_is_curated_as_gitlab_merges_it(tmp_path):
    """Included files are fragments of their pipeline, not invalid documents; the pipeline's units
    are its merged jobs, with extends (multi-level, arrays) and !reference resolved across files;
    an override of a job from a template include (no script of its own) is accepted; external
    includes are recorded, never fetched."""
    _write(tmp_path / "src" / "proj", _GITLAB_PROJECT)
    result = _curate(_local("gl", "devops_workflow", tmp_path / "src"), tmp_path)
    assert [q.path for q in result.quarantined] == []
    assert sorted(result.fragments) == ["proj/ci/jobs.yml", "proj/ci/more.yml", "proj/ci/templates.yml"]
    [doc] = result.documents
    assert doc.path == "proj/.gitlab-ci.yml"
    units = {json.loads(u["meta"])["job"]: u for u in doc.units}
    assert set(units) == {"build", "unit", "sast"}
    build, unit = json.loads(units["build"]["meta"]), json.loads(units["unit"]["meta"])
    assert build["stage"] == "build" and build["image"] == "docker:24" and build["extends"] == [".docker", ".rules:mr"]
    assert unit["extends"] == [".docker", ".deep"] and unit["image"] == "docker:24"
    assert "make test" in units["unit"]["text"] and "echo deep" in units["unit"]["text"]
    assert "merge_request_event" in units["build"]["text"]
    meta = json.loads(doc.meta)
    assert meta["external_includes"] == [{"template": "Security/SAST.gitlab-ci.yml"},
                                         {"component": "gitlab.com/components/secret-detection/secret-detection@1.0"}]
    assert sorted(meta["included_local"]) == ["proj/ci/jobs.yml", "proj/ci/more.yml", "proj/ci/templates.yml"]
    assert any("override a job of an include" in w for w in meta["warnings"])


def test_an_included_file_that_gitlab_would_refuse_still_fails_its_pipeline(tmp_path):
    """Merging must not hide errors: a job in an included file without any script, and with no
    external include it could override, makes the pipeline invalid."""
    files = dict(_GITLAB_PROJECT)
    files[".gitlab-ci.yml"] = """
        include:
          - local: ci/templates.yml
          - local: ci/broken.yml
        """
    files["ci/broken.yml"] = """
        lint:
          extends: .docker
        """
    _write(tmp_path / "src" / "proj", files)
    result = _curate(_local("gl", "devops_workflow", tmp_path / "src"), tmp_path)
    reasons = {q.path: (q.reason, q.detail) for q in result.quarantined}
    assert reasons["proj/.gitlab-ci.yml"][0] == "invalid_gitlab_ci"
    assert "lint: job has no script" in reasons["proj/.gitlab-ci.yml"][1]


def test_a_root_pipelines_units_name_the_project(tmp_path):
    """A source that is one repository: its `.gitlab-ci.yml` sits at the source root, and its
    units are named after the project (the source), not "pipeline"."""
    _write(tmp_path / "acme-api", {".gitlab-ci.yml": """
        build:
          script: [make]
        """})
    [doc] = _curate(_local("acme-api", "devops_workflow", tmp_path / "acme-api"), tmp_path).documents
    assert [u["title"] for u in doc.units] == ["build (stage test) — acme-api"]
