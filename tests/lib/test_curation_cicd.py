"""CI/CD curation on real files: the shipped sample, the shared corpus, and pipelines written here.

No mocks: every test curates real bytes through `curate_file` with a SourceContext over a real
directory (the shipped sample, the shared corpus, or a tmp_path the test writes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ossa_assets.lib.curation.cicd import curate_file
from ossa_assets.lib.curation.common import Limits, SourceContext

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "ossa_assets" / "corpora" / "sample" / "cicd"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "corpora"
CICD = SHARED / "cicd"
needs_shared = pytest.mark.skipif(not CICD.is_dir(), reason=f"shared corpus not present at {CICD}")


def source_ctx(root: Path, limits: Limits | None = None) -> SourceContext:
    # os.walk, not a glob: pipelines live in dot-folders (.github/workflows, .circleci)
    files = sorted(
        (Path(d) / f).relative_to(root).as_posix() for d, _, names in os.walk(root) for f in names
    )
    return SourceContext(files, lambda rel: (root / rel).read_bytes(), limits or Limits())


def curate_dir(root: Path, limits: Limits | None = None) -> dict:
    ctx = source_ctx(root, limits)
    return {rel: curate_file(rel, (root / rel).read_bytes(), ctx) for rel in ctx.files()}


def curate_text(tmp_path: Path, rel: str, text: str, extra: dict[str, str] | None = None, limits: Limits | None = None):
    """Write `text` (and any `extra` files) under tmp_path and curate `rel` over that source."""
    for name, body in {rel: text, **(extra or {})}.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(body))
    ctx = source_ctx(tmp_path, limits)
    return curate_file(rel, (tmp_path / rel).read_bytes(), ctx), ctx


def units_by_job(outcome) -> dict:
    return {u.meta["job"]: u for u in outcome.document.units}


# -- the shipped sample --------------------------------------------------------------------------------


def test_every_sample_pipeline_is_accepted_with_job_units():
    outcomes = curate_dir(SAMPLE)
    assert len(outcomes) == 34
    for rel, o in outcomes.items():
        assert o.status == "document", (rel, o.reason, o.detail)
        assert o.document.units, rel
        for u in o.document.units:
            assert u.unit_type == "job" and u.title.strip() and u.text.strip()
            json.dumps(u.meta)
        json.dumps(o.document.meta)
    formats = {}
    for o in outcomes.values():
        formats[o.document.format] = formats.get(o.document.format, 0) + 1
    assert formats == {"gitlab_ci": 14, "github_actions": 16, "azure_pipelines": 2, "circleci": 1, "tekton": 1}


def test_sample_gitlab_files_with_reference_tags():
    outcomes = curate_dir(SAMPLE)
    with_ref = sorted(rel for rel in outcomes if rel.startswith("gitlab/") and b"!reference" in (SAMPLE / rel).read_bytes())
    assert with_ref == [
        "gitlab/inventory-service/.gitlab-ci.yml",
        "gitlab/payments-api/.gitlab-ci.yml",
        "gitlab/templates/docker-build.gitlab-ci.yml",
    ]
    assert all(outcomes[rel].status == "document" for rel in with_ref)
    # resolved within the file: the login script is spliced into the build template's script
    build = units_by_job(outcomes["gitlab/templates/docker-build.gitlab-ci.yml"])[".image-build"]
    assert "mkdir -p ~/.docker" in build.text and "!reference" not in build.text
    assert build.meta["template"] is True and build.title == ".image-build (stage build) — docker-build"
    # payments-api extends templates from a project include it cannot see: kept, with warnings
    pay = outcomes["gitlab/payments-api/.gitlab-ci.yml"].document
    smoke = units_by_job(outcomes["gitlab/payments-api/.gitlab-ci.yml"])["smoke-staging"]
    assert "!reference [.deploy-staging, rules]" in smoke.text
    assert any("may come from an include" in w for w in pay.meta["warnings"])
    compile_ = units_by_job(outcomes["gitlab/payments-api/.gitlab-ci.yml"])["compile"]
    assert compile_.meta["extends"] == [".gradle"] and compile_.meta["image"] == "$JAVA_IMAGE"
    assert "./gradlew --version" in compile_.text  # before_script merged in from .gradle
    assert "JAVA_IMAGE: eclipse-temurin:21-jdk" in compile_.text  # the global variable it uses
    assert "GRADLE_OPTS" not in compile_.text  # ...and not the ones it does not


def test_sample_unit_titles_and_meta():
    outcomes = curate_dir(SAMPLE)
    mono = units_by_job(outcomes["gitlab/monorepo/.gitlab-ci.yml"])
    assert mono["orders"].title == "orders (stage services) — monorepo"
    assert mono["orders"].meta["uses"] == ["services/orders/.gitlab-ci.yml"]
    assert mono["compose-integration"].meta["needs"] == ["orders", "catalog"]
    rel = units_by_job(outcomes["github/rust-cli/.github/workflows/release.yml"])
    assert rel["build"].title == "build (${{ matrix.target }}) (build) — Release"
    assert "actions/checkout@v4" in rel["build"].meta["uses"]
    assert rel["publish"].meta["needs"] == ["build"]
    assert "'on':" in rel["build"].text and "tags:" in rel["build"].text  # the trigger travels with the job
    doc = outcomes["github/platform-workflows/.github/workflows/python-service.yml"].document
    assert doc.meta["reusable"] is True and doc.meta["triggers"] == ["workflow_call"]
    circle = units_by_job(outcomes["circleci/flask-reports/.circleci/config.yml"])
    assert circle["deploy"].meta["needs"] == ["test", "build-docs"]
    assert circle["test"].title == "test (workflow ci) — flask-reports"
    tekton = units_by_job(outcomes["tekton/image-build/pipeline.yaml"])
    assert list(tekton) == ["clone", "unit-tests", "build", "scan", "report"]
    assert tekton["report"].meta["stage"] == "finally" and tekton["build"].meta["needs"] == ["unit-tests"]
    azure = outcomes["azure/dotnet-orders-api/azure-pipelines.yml"].document
    assert [u.title for u in azure.units][0] == "Build and test (BuildAndTest) (stage Build) — dotnet-orders-api"
    assert "UseDotNet@2" in azure.units[0].meta["uses"]


def test_outcomes_are_deterministic():
    a = {rel: (o.status, o.reason, o.document and [(u.title, u.text) for u in o.document.units]) for rel, o in curate_dir(SAMPLE).items()}
    b = {rel: (o.status, o.reason, o.document and [(u.title, u.text) for u in o.document.units]) for rel, o in curate_dir(SAMPLE).items()}
    assert a == b


# -- GitLab lint ------------------------------------------------------------------------------------------


def test_gitlab_extends_chain_merges_mappings_and_replaces_lists(tmp_path):
    o, _ = curate_text(tmp_path, "shop/.gitlab-ci.yml", """
        variables:
          REGISTRY: registry.example.com
          UNUSED: x
        .base:
          image: python:3.12
          variables: {A: "1", B: "1"}
          script: [echo base]
        .mid:
          extends: .base
          variables: {B: "2"}
          tags: [docker]
        .other:
          before_script: [echo other]
        job:
          extends: [.mid, .other]
          variables: {C: "3"}
          script: [echo job $REGISTRY]
    """)
    assert o.status == "document", o.detail
    job = units_by_job(o)["job"]
    assert job.meta["extends"] == [".base", ".mid", ".other"]
    assert job.meta["runs_on"] == ["docker"] and job.meta["image"] == "python:3.12"
    text = job.text
    assert "A: '1'" in text and "B: '2'" in text and "C: '3'" in text
    assert "echo base" not in text and "echo job $REGISTRY" in text  # lists are replaced, not merged
    assert "echo other" in text and "REGISTRY: registry.example.com" in text and "UNUSED" not in text
    assert "extends" not in text
    assert job.title == "job (stage test) — shop"


def test_gitlab_extends_cycle_and_unknown_parent_are_rejected(tmp_path):
    o, _ = curate_text(tmp_path, ".gitlab-ci.yml", """
        .a:
          extends: .b
          script: [echo]
        .b:
          extends: .a
        job:
          extends: .a
    """)
    assert (o.status, o.reason) == ("rejected", "invalid_gitlab_ci")
    assert "circular extends" in o.detail
    o, _ = curate_text(tmp_path, "x/.gitlab-ci.yml", """
        job:
          extends: .nowhere
    """)
    assert o.reason == "invalid_gitlab_ci" and "extends unknown job '.nowhere'" in o.detail


def test_gitlab_stage_must_be_declared(tmp_path):
    o, _ = curate_text(tmp_path, ".gitlab-ci.yml", """
        stages: [lint, build]
        job:
          stage: test
          script: [make]
    """)
    assert o.reason == "invalid_gitlab_ci" and "stage 'test' is not in stages" in o.detail
    # stages absent: the defaults (build, test, deploy, plus .pre/.post) apply
    o, _ = curate_text(tmp_path, "d/.gitlab-ci.yml", """
        first: {stage: .pre, script: [a]}
        job: {stage: deploy, script: [b]}
    """)
    assert o.status == "document" and o.document.meta["stages"] == ["build", "test", "deploy"]
    o, _ = curate_text(tmp_path, "e/.gitlab-ci.yml", "job: {stage: lint, script: [b]}\n")
    assert o.reason == "invalid_gitlab_ci"
    # an include we cannot see may declare the stage: a warning, not an error
    o, _ = curate_text(tmp_path, "f/.gitlab-ci.yml", """
        include: {project: group/templates, file: stages.yml}
        job: {stage: lint, script: [b]}
    """)
    assert o.status == "document" and any("stage 'lint'" in w for w in o.document.meta["warnings"])


def test_gitlab_needs_and_dependencies(tmp_path):
    base = textwrap.dedent("""
        stages: [build, test]
        build: {stage: build, script: [make]}
        test:
          stage: test
          script: [make test]
    """)
    cases = {
        "needs: [nope]": "needs names unknown job 'nope'",
        "needs: [test]": "needs names the job itself",
        "needs: build": "needs must be a list",
        "needs: [~]": "needs entries cannot be empty",
        "dependencies: [nope]": "dependencies names unknown job 'nope'",
    }
    for i, (line, error) in enumerate(cases.items()):
        o, _ = curate_text(tmp_path, f"c{i}/.gitlab-ci.yml", base + "  " + line + "\n")
        assert (o.reason, error in o.detail) == ("invalid_gitlab_ci", True), (line, o.detail)
    o, _ = curate_text(tmp_path, "later/.gitlab-ci.yml", """
        stages: [build, test]
        build: {stage: build, script: [make], needs: [test]}
        test: {stage: test, script: [make test]}
    """)
    assert "is not defined in current or prior stages" in o.detail
    o, _ = curate_text(tmp_path, "ok/.gitlab-ci.yml", base + textwrap.indent(textwrap.dedent("""
        needs:
          - build
          - {job: lint, optional: true}
          - {pipeline: $PARENT_PIPELINE_ID, job: gen}
          - {project: group/other, job: pkg, ref: main, artifacts: true}
        dependencies: [build]
    """), "  "))
    assert o.status == "document", o.detail
    assert units_by_job(o)["test"].meta["needs"] == ["build", "lint", "gen", "pkg"]


def test_gitlab_script_trigger_and_rules(tmp_path):
    o, _ = curate_text(tmp_path, "a/.gitlab-ci.yml", "job: {stage: test}\n")
    assert o.reason == "invalid_gitlab_ci" and "no script, trigger or run" in o.detail
    o, _ = curate_text(tmp_path, "b/.gitlab-ci.yml", "job: {script: []}\n")
    assert "script can't be blank" in o.detail
    o, _ = curate_text(tmp_path, "c/.gitlab-ci.yml", "child: {trigger: {include: child.yml}}\n")
    assert o.status == "document" and units_by_job(o)["child"].meta["uses"] == ["child.yml"]
    o, _ = curate_text(tmp_path, "d/.gitlab-ci.yml", "job: {script: [x], rules: [{if: $A, whenever: always}]}\n")
    assert o.reason == "invalid_gitlab_ci" and "unknown keys ['whenever']" in o.detail
    o, _ = curate_text(tmp_path, "e/.gitlab-ci.yml", "job: {script: [x], rules: [{if: $A, when: sometimes}]}\n")
    assert "when 'sometimes'" in o.detail
    o, _ = curate_text(tmp_path, "f/.gitlab-ci.yml", "job: {script: [x], only: [main], rules: [{if: $A}]}\n")
    assert "only/except may not be used with rules" in o.detail
    o, _ = curate_text(tmp_path, "g/.gitlab-ci.yml", "job: [echo]\n")
    assert "job config should be a mapping" in o.detail


def test_gitlab_include_forms_are_checked_and_never_fetched(tmp_path):
    good = """
        include:
          - local: /ci/lint.yml
          - https://example.com/ci/remote.yml
          - remote: https://example.com/ci/other.yml
          - template: Security/SAST.gitlab-ci.yml
          - project: group/templates
            ref: v1
            file: [a.yml, b.yml]
          - component: $CI_SERVER_FQDN/group/comp/build@1.0
            inputs: {stage: build}
        build:
          extends: .lint-template
          stage: build
    """
    o, ctx = curate_text(tmp_path, ".gitlab-ci.yml", good, extra={"ci/lint.yml": """
        .lint-template:
          script: [ruff check .]
    """})
    assert o.status == "document", o.detail
    # the local include inside the source was read (and recorded); nothing else was touched
    assert ctx.reads == {"ci/lint.yml"}
    assert o.document.meta["included_local"] == ["ci/lint.yml"] and o.document.meta["includes"] == 6
    assert "ruff check ." in units_by_job(o)["build"].text
    for i, bad in enumerate([
        "include: [{local: a.yml, remote: https://x/y.yml}]",
        "include: [{project: group/templates}]",
        "include: [{file: a.yml}]",
        "include: [{local: a.yml, when: always}]",
        "include: [42]",
    ]):
        o, _ = curate_text(tmp_path, f"bad{i}/.gitlab-ci.yml", bad + "\njob: {script: [x]}\n")
        assert (o.status, o.reason) == ("rejected", "invalid_gitlab_ci"), bad


def test_gitlab_template_library_yields_template_units(tmp_path):
    o, _ = curate_text(tmp_path, "templates/node.gitlab-ci.yml", """
        .vars: &vars {NODE: "22"}
        .node-test:
          image: node:22
          variables: *vars
          script: [npm test]
    """)
    assert o.status == "document" and o.document.meta["template_library"] is True
    assert [u.title for u in o.document.units] == [".node-test — node"]


def test_gitlab_spec_header_component(tmp_path):
    o, _ = curate_text(tmp_path, "templates/build.yml", """
        spec:
          inputs:
            stage: {default: build}
        ---
        build-job:
          stage: $[[ inputs.stage ]]
          script: [make]
    """)
    assert o.status == "document", o.detail
    assert o.document.format == "gitlab_ci" and o.document.meta["spec_inputs"] == ["stage"]


@needs_shared
def test_gitlab_reference_fixtures_of_gitlab_ci_local():
    base = "gitlab/firecow-gitlab-ci-local/tests/test-cases/"
    ctx = source_ctx(CICD)

    def curate(rel):
        return curate_file(base + rel, (CICD / base / rel).read_bytes(), ctx)

    assert curate("reference/.gitlab-ci-10-level-deep.yml").status == "document"
    deep = curate("reference/.gitlab-ci-11-level-deep.yml")
    assert deep.reason == "invalid_gitlab_ci" and "nested deeper than 10 levels" in deep.detail
    circ = curate("reference-circular-chain/.gitlab-ci.yml")
    assert circ.reason == "invalid_gitlab_ci" and "circular reference" in circ.detail
    ref = curate("reference/.gitlab-ci.yml")  # references into a local include
    assert ref.status == "document"
    assert 'echo "Setting something general up"' in units_by_job(ref)["test-job"].text
    expected = {
        "stage-not-found": "stage 'invalid' is not in stages",
        "needs-invalid-stage": "not defined in current or prior stages",
        "no-script": "no script, trigger or run",
        "needs-contains-dependencies": "dependency 'two' should be part of needs",
        "self-dependency": "names the job itself",
        "invalid-stages": "stages must be a list",
    }
    for case, error in expected.items():
        o = curate(f"{case}/.gitlab-ci.yml")
        assert o.reason == "invalid_gitlab_ci" and error in o.detail, (case, o.detail)


# -- GitHub Actions lint -------------------------------------------------------------------------------------


WORKFLOW = """
    name: CI
    on: {trigger}
    env:
      PY: "3.12"
    jobs:
      build:
        runs-on: ubuntu-latest
        steps:
          - uses: actions/checkout@v4
          - run: make
      test:
        name: Unit tests
        needs: build
        runs-on: [self-hosted, linux]
        container: python:3.12
        steps:
          - uses: ./.github/actions/setup
          - uses: docker://alpine:3.20
          - run: pytest
"""


@pytest.mark.parametrize(
    "trigger, events",
    [
        ("push", ["push"]),
        ("[push, pull_request]", ["push", "pull_request"]),
        ("{push: {branches: [main]}, schedule: [{cron: '0 3 * * *'}], workflow_dispatch: }",
         ["push", "schedule", "workflow_dispatch"]),
    ],
)
def test_github_on_forms(tmp_path, trigger, events):
    o, _ = curate_text(tmp_path, ".github/workflows/ci.yml", WORKFLOW.replace("{trigger}", trigger))
    assert o.status == "document", o.detail
    doc = o.document
    assert doc.format == "github_actions" and doc.meta["triggers"] == events and doc.meta["jobs"] == ["build", "test"]
    test = units_by_job(o)["test"]
    assert test.title == "Unit tests (test) — CI"
    assert test.meta["needs"] == ["build"] and test.meta["runs_on"] == ["self-hosted", "linux"]
    assert test.meta["uses"] == ["./.github/actions/setup", "docker://alpine:3.20"] and test.meta["image"] == "python:3.12"
    assert "'on':" in test.text and "PY: '3.12'" in test.text and "build:" not in test.text


def test_github_on_key_is_recognised_whatever_the_path(tmp_path):
    # YAML 1.1 reads `on` as True; a quoted "on" stays a string: both are the trigger
    for i, key in enumerate(["on", '"on"']):
        o, _ = curate_text(tmp_path, f"w{i}.yaml", f"{key}: push\njobs:\n  a:\n    runs-on: x\n    steps: [{{run: ls}}]\n")
        assert o.status == "document" and o.document.format == "github_actions", o.detail


@pytest.mark.parametrize(
    "old, new, error",
    [
        ("on: push", "on: {pushed: }", "schema: on: Additional properties are not allowed ('pushed' was unexpected)"),
        ("on: push\n", "", "schema: (top level): 'on' is a required property"),
        ("  test:", "  1test:", "schema: jobs: '1test' does not match any of the regexes"),
        ("needs: build", "needs: [build, deploy]", "needs unknown job 'deploy'"),
        ("- run: pytest", "- {run: pytest, uses: actions/x@v1}", "schema: jobs.test.steps.2: matches more than one"),
        ("- uses: actions/checkout@v4", "- uses: actions/checkout", "is not owner/repo[/path]@ref"),
        ("runs-on: ubuntu-latest", "runs-on:", "runs-on is missing"),
        ("container: python:3.12", "container: {image: python, entrypoint: sh}",
         "schema: jobs.test.container: Additional properties are not allowed ('entrypoint' was unexpected)"),
        ("needs: build", "needs: test", "needs itself"),
        ('env:\n  PY: "3.12"', "env: PY=3.12", "schema: env: 'PY=3.12' does not match"),  # a mapping or an expression
        ("name: CI", "name: CI\nservices: {}", "schema: (top level): Additional properties are not allowed ('services'"),
    ],
)
def test_github_structural_errors(tmp_path, old, new, error):
    text = textwrap.dedent(WORKFLOW).replace("{trigger}", "push")
    assert old in text
    o, _ = curate_text(tmp_path, ".github/workflows/ci.yml", text.replace(old, new, 1))
    assert (o.status, o.reason) == ("rejected", "invalid_github_actions"), (old, o.detail)
    assert error in o.detail, o.detail


def test_github_needs_cycle(tmp_path):
    o, _ = curate_text(tmp_path, ".github/workflows/c.yml", """
        on: push
        jobs:
          a: {runs-on: x, needs: b, steps: [{run: ls}]}
          b: {runs-on: x, needs: a, steps: [{run: ls}]}
    """)
    assert o.reason == "invalid_github_actions" and "cycle" in o.detail


@needs_shared
def test_every_invalid_fixture_of_the_manifest_is_rejected():
    manifest = [json.loads(line) for line in (SHARED / "manifest.jsonl").read_text().splitlines()]
    invalid = [m["file"] for m in manifest if m["domain"] == "cicd" and m["note"].startswith("INVALID")]
    assert len(invalid) == 20
    ctx = source_ctx(CICD)
    for f in invalid:
        rel = f.removeprefix("cicd/")
        o = curate_file(rel, (CICD / rel).read_bytes(), ctx)
        assert o.status == "rejected", rel
        assert o.reason in ("invalid_github_actions", "empty"), (rel, o.reason)


@needs_shared
def test_schema_valid_workflows_of_schemastore_are_accepted():
    folder = CICD / "github-actions" / "SchemaStore" / "src" / "test" / "github-workflow"
    ctx = source_ctx(CICD)
    rels = sorted(p.relative_to(CICD).as_posix() for p in folder.iterdir())
    assert len(rels) == 37
    for rel in rels:
        o = curate_file(rel, (CICD / rel).read_bytes(), ctx)
        assert o.status == "document" and o.document.format == "github_actions", (rel, o.detail)


@needs_shared
def test_starter_workflow_metadata_and_pairing():
    ctx = source_ctx(CICD)
    meta_rel = "github-actions/actions-starter-workflows/ci/properties/python-app.properties.json"
    o = curate_file(meta_rel, (CICD / meta_rel).read_bytes(), ctx)
    # not a pipeline, but read by its workflow: the caller counts it as that document's fragment
    assert (o.status, o.reason) == ("rejected", "not_pipeline") and "metadata" in o.detail
    rel = "github-actions/actions-starter-workflows/ci/python-app.yml"
    ctx.reads.clear()
    o = curate_file(rel, (CICD / rel).read_bytes(), ctx)
    assert o.status == "document"
    assert o.document.meta["starter_properties"]["description"] == "Create and test a Python application."
    assert ctx.reads == {meta_rel}  # the pairing is a recorded dependency


# -- formats, hostile input, limits ----------------------------------------------------------------------------


def test_other_files(tmp_path):
    o, _ = curate_text(tmp_path, "docs/README.md", "# Pipelines\n\nHow the pipelines of this project are laid out.\n")
    assert o.status == "document" and o.document.format == "prose"
    o, _ = curate_text(tmp_path, "x.out", "line 1: error\n")
    assert o.reason == "unsupported_format"
    o, _ = curate_text(tmp_path, "schema.json", "{}")
    assert o.reason == "unsupported_format"
    o, _ = curate_text(tmp_path, "action.yml", "name: x\ndescription: y\nruns: {using: node20, main: a.js}\n")
    assert o.reason == "not_pipeline"
    o, _ = curate_text(tmp_path, "k8s.yaml", "apiVersion: v1\nkind: ConfigMap\ndata: {a: b}\n")
    assert o.reason == "not_pipeline"
    o, _ = curate_text(tmp_path, "empty.yml", "{}\n")
    assert o.reason == "empty"
    o, _ = curate_text(tmp_path, "tekton.yaml", """
        apiVersion: tekton.dev/v1
        kind: Pipeline
        metadata: {name: p}
        spec:
          tasks:
            - {name: a, taskRef: {name: t}}
            - {name: b, runAfter: [c], taskRef: {name: t}}
    """)
    assert o.reason == "invalid_pipeline" and o.detail.startswith("tekton:") and "unknown task 'c'" in o.detail
    ctx = source_ctx(tmp_path)
    assert curate_file("bin.yml", b"\x00\x01\x02", ctx).reason == "binary"
    assert curate_file("latin.yml", "on: caf\xe9".encode("latin-1"), ctx).reason == "not_utf8"


def test_alias_bomb_and_unsafe_tag_are_rejected_quickly(tmp_path):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        levels.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    bomb = "\n".join(levels) + "\njob:\n  script: *i\n"
    start = time.monotonic()
    o, _ = curate_text(tmp_path, ".gitlab-ci.yml", bomb)
    assert o.reason == "yaml_alias_bomb"
    o, _ = curate_text(tmp_path, "p/.gitlab-ci.yml", "job:\n  script: !!python/object/apply:os.system ['echo pwned']\n")
    assert o.reason == "yaml_unsafe_tag"
    assert time.monotonic() - start < 5


def test_reference_fan_out_is_bounded(tmp_path):
    # nine levels (allowed depth) of ten references each would expand to 10^9 script lines
    lines = [".s0: [echo]"]
    for i in range(1, 9):
        lines.append(f".s{i}: [" + ", ".join([f"!reference [.s{i - 1}]"] * 10) + "]")
    lines.append("job: {script: [" + ", ".join(["!reference [.s8]"] * 10) + "]}")
    start = time.monotonic()
    o, _ = curate_text(tmp_path, ".gitlab-ci.yml", "\n".join(lines) + "\n")
    assert o.reason == "invalid_gitlab_ci" and "expansion exceeds" in o.detail
    assert time.monotonic() - start < 5


def test_units_are_capped_and_long_jobs_truncated(tmp_path):
    jobs = "".join(f"job{i}: {{script: [echo {i}]}}\n" for i in range(10))
    o, _ = curate_text(tmp_path, ".gitlab-ci.yml", jobs, limits=Limits(max_units=3))
    assert len(o.document.units) == 3 and o.document.meta["units_truncated"] is True
    long_script = "\n".join(f"    - echo line {i} " + "x" * 80 for i in range(400))
    o, _ = curate_text(tmp_path, "l/.gitlab-ci.yml", "job:\n  script:\n" + long_script + "\n")
    unit = o.document.units[0]
    assert unit.meta["truncated"] is True and len(unit.text) < 16_100


def test_curation_never_fetches_or_executes(tmp_path):
    """Curate pipelines that name remote includes, docker images and scripts, under an audit hook
    that fails on any socket, subprocess or exec: nothing may be fetched or run."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".gitlab-ci.yml").write_text(
        "include:\n  - remote: https://example.com/x.yml\n  - project: g/p\n    file: a.yml\n"
        "job: {image: 'docker:27', script: ['curl https://example.com | sh']}\n"
    )
    (tmp_path / ".github" / "workflows" / "ci.yml").write_text(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{uses: 'docker://alpine'}, {run: 'rm -rf /'}]\n"
    )
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from ossa_assets.lib.curation.common import Limits, SourceContext
        from ossa_assets.lib.curation.cicd import curate_file
        root = Path({str(tmp_path)!r})
        files = [".gitlab-ci.yml", ".github/workflows/ci.yml"]
        ctx = SourceContext(files, lambda r: (root / r).read_bytes(), Limits())
        def hook(event, args):
            if event.startswith(("socket.", "subprocess.", "os.exec", "os.system", "os.posix_spawn")):
                raise RuntimeError("forbidden: " + event)
        sys.addaudithook(hook)
        print([curate_file(f, (root / f).read_bytes(), ctx).status for f in files])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['document', 'document']"


# A YAML graph with a cycle: the node an anchor names contains an alias of that anchor, so its
# expansion never ends. Before the loader's node walk (common._expanded_size, now
# _check_node_graph) tracked the nodes on its current path, it pushed the same node again and
# again: 15-25 s to exhaust a 1.5 GB address space (MemoryError -> curator_error), and without
# a cap it grows until the OOM killer (measured on the loader of commit ede529a).
ALIAS_CYCLES = {
    "sequence": "a: &a [1, *a]\njob: {script: *a}\n",
    "mapping": "a: &a {b: *a}\njob: {script: [x]}\n",
    "mapping_key": "? &a [*a]\n: 1\njob: {script: [x]}\n",
    "merge_key": ".base: &a {script: [x], <<: *a}\njob: {extends: .base}\n",
    "merge_key_nested": ".base: &a {script: [x], variables: {<<: *a}}\njob: {<<: *a, stage: test}\n",
    "merge_key_list": ".base: &a {script: [x], <<: [{stage: test}, *a]}\njob: {script: [y]}\n",
    "two_anchors": "a: &a {b: &b [1, {c: *a}]}\njob: {script: *b}\n",
    "second_document": "job: {script: [x]}\n---\na: &a [*a]\n",
}


def test_recursive_alias_is_rejected_without_hanging():
    """Every alias cycle (in a sequence, a mapping, a key, through a merge key) is refused as
    yaml_alias_bomb with a detail naming the cycle, within a deadline, under a memory cap. The
    child has RLIMIT_AS (so a walk that grows fails with MemoryError -> curator_error, not the
    machine) and a wall-clock timeout (so a walk that loops fails the test, not the suite); it
    prints one line per case as it goes, so a hang names its case."""
    script = textwrap.dedent(f"""
        import json, resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
        sys.path.insert(0, {str(REPO)!r})
        from ossa_assets.lib.curation.common import Limits, SourceContext
        from ossa_assets.lib.curation.cicd import curate_file
        for case, text in json.loads(sys.argv[1]).items():
            raw = text.encode()
            t = time.monotonic()
            o = curate_file(".gitlab-ci.yml", raw, SourceContext([".gitlab-ci.yml"], lambda r: raw, Limits()))
            print(json.dumps([case, o.status, o.reason, o.detail, time.monotonic() - t]), flush=True)
        # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, carried over exec)
        hwm = next(x for x in open("/proc/self/status").read().splitlines() if x.startswith("VmHWM:"))
        print(json.dumps(["peak_mb", int(hwm.split()[1]) / 1024]))
    """)
    try:
        out = subprocess.run([sys.executable, "-c", script, json.dumps(ALIAS_CYCLES)],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        done = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"the loader hangs on an alias cycle; cases finished before the deadline: {done!r}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    results = {r[0]: r[1:] for r in rows[:-1]}
    assert set(results) == set(ALIAS_CYCLES)
    for case, (status, reason, detail, seconds) in results.items():
        assert (status, reason) == ("rejected", "yaml_alias_bomb"), (case, status, reason, detail)
        assert "cycle" in detail, (case, detail)
        assert seconds < 1.0, f"{case}: {seconds:.2f} s to refuse a cycle (the walk is linear: < 1 ms)"
    # measured: 16.6-16.7 MB for the whole child (imports included); bound: that + 100 MB
    assert rows[-1][0] == "peak_mb" and rows[-1][1] < 120, f"child peak RSS {rows[-1][1]:.0f} MB"


def test_shared_aliases_without_a_cycle_are_accepted(tmp_path):
    """The cycle check must not take sharing for a cycle: one anchor aliased many times, from a
    sibling, a nested node and a merge key, is a DAG and loads as usual."""
    o, _ = curate_text(tmp_path, ".gitlab-ci.yml", """\
        .base: &base {image: alpine, script: &s [make], variables: {V: &v "1"}}
        a: {<<: *base, stage: test}
        b: {<<: [*base], script: [*s, *s], variables: {X: *v, Y: *v}}
        c: {extends: .base, script: *s}
        """)
    assert o.status == "document", (o.reason, o.detail)
    assert set(units_by_job(o)) == {"a", "b", "c"}


def test_alias_chain_deeper_than_the_limit_is_too_deep(tmp_path):
    """Depth counts the expanded tree: 40 anchors, each nesting the previous one 55 levels deep,
    are 2200 levels once expanded although no spot of the text is deeper than 57. The old
    top-down depth check skipped a shared node it had already met at a shallower depth, so with
    the shallow aliases walked first it let this through: the file was curated as a document
    whose parsed structure is 2200 levels deep (json.dumps of it hits the recursion limit)."""
    def nest(n: int, inner: str) -> str:
        return "[" * n + inner + "]" * n

    lines = [".a1: &a1 " + nest(55, "x")]
    lines += [f".a{i}: &a{i} " + nest(55, f"*a{i - 1}") for i in range(2, 41)]
    lines.append("job: {script: [make]}")
    lines.append(".uses: [" + ", ".join(f"*a{i}" for i in range(40, 0, -1)) + "]")
    start = time.monotonic()
    o, _ = curate_text(tmp_path, ".gitlab-ci.yml", "\n".join(lines) + "\n")
    assert (o.reason, o.detail) == ("too_deep", "nesting deeper than 64")
    assert time.monotonic() - start < 5


def test_github_runs_a_workflow_with_branches_under_workflow_dispatch(tmp_path):
    """GitHub ignores filters under workflow_dispatch and runs the workflow: kept, with a warning."""
    out, _ = curate_text(tmp_path, ".github/workflows/release.yml", """
        on:
          push:
            branches: [main]
          workflow_dispatch:
            branches: [main]
            inputs:
              dry-run:
                type: boolean
                default: false
        jobs:
          release:
            runs-on: ubuntu-latest
            steps:
              - uses: actions/checkout@v4
              - run: make release
        """)
    assert out.status == "document", out
    assert any("workflow_dispatch: keys GitHub ignores ['branches']" in w for w in out.document.meta["warnings"])
    assert [u.meta["job"] for u in out.document.units] == ["release"]
