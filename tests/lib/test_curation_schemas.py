"""The platforms' own schemas (SchemaStore's github-workflows and gitlab-ci, as check-jsonschema
vendors them) decide structure; waivers are only where the platform accepts what the schema
refuses, each a warning with its reason."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ossa_assets.lib.curation.cicd import schemas
from ossa_assets.lib.curation.pipeline import CurationSettings
from tests.lib.test_curation_cicd import CICD, curate_text, needs_shared

WORKFLOW = """\
    on: push
    jobs:
      test:
        runs-on: ubuntu-latest
        steps:
          - uses: actions/checkout@v4
          - run: pytest
    """


def _workflow(tmp_path, text):
    return curate_text(tmp_path, ".github/workflows/ci.yml", text)[0]


# -- what the schema catches that the curators' own rules did not --------------------------------------


def test_a_workflow_github_would_refuse_on_structure_is_rejected_with_the_schemas_words(tmp_path):
    o = _workflow(tmp_path, WORKFLOW.replace("- run: pytest", "- run: pytest\n            timeout-minutes: two minutes"))
    assert (o.status, o.reason) == ("rejected", "invalid_github_actions")
    assert o.detail.startswith("github-workflows schema: jobs.test.steps.1.timeout-minutes:"), o.detail


def test_the_schema_validates_gitlabs_merged_config_not_each_file(tmp_path):
    """A job in an included file with `variables: true` makes its pipeline invalid (the included
    file alone is a fragment, never linted alone); a cache key with a slash, and the removed `type:`
    keyword, are refused as GitLab refuses them."""
    root = """\
        include:
          - local: /ci/jobs.yml
        build:
          script: [make]
        """
    o, _ = curate_text(tmp_path, ".gitlab-ci.yml", root, {"ci/jobs.yml": "unit:\n  script: [make test]\n  variables: true\n"})
    assert (o.reason, o.detail) == ("invalid_gitlab_ci", "gitlab-ci schema: unit.variables: True is not of type 'object'")
    for bad, where in [("cache: {key: maven/, paths: [.m2]}", "build.cache.key"), ("type: test", "build")]:
        o, _ = curate_text(tmp_path / where, ".gitlab-ci.yml", f"build:\n  script: [make]\n  {bad}\n")
        assert o.reason == "invalid_gitlab_ci" and o.detail.startswith(f"gitlab-ci schema: {where}:"), o.detail


def test_script_nesting_is_gitlabs_ten_levels(tmp_path):
    def nested(levels):
        item = f"echo {levels}"
        for _ in range(levels - 1):
            item = [item]
        return json.dumps({"job": {"script": ["echo 1", item]}})

    ok, _ = curate_text(tmp_path / "a", ".gitlab-ci.yml", nested(10))
    assert ok.status == "document", ok.detail
    assert any("nested up to 10 levels" in w for w in ok.document.meta["warnings"])
    deep, _ = curate_text(tmp_path / "b", ".gitlab-ci.yml", nested(11))
    assert deep.reason == "invalid_gitlab_ci" and "job.script.1." in deep.detail, deep.detail


# -- waivers: the platform accepts what the schema refuses ---------------------------------------------


@pytest.mark.parametrize("old, new, waiver", [
    ("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    services: ${{ fromJSON('{}') }}", "computed at run time"),
    ("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    container:", "YAML null"),
    ("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    strategy: {max-parallel: 5}", "without a matrix"),
    ("on: push", "on: {push: {branches: main}}", "single string for an event filter"),
    ("on: push", "on: [push, image_version]", "newer than the schema"),
    ("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    snapshot: {image-name: img, version: '2.*'}", "custom-image snapshot"),
])
def test_github_runs_what_the_schema_refuses_and_it_is_kept_with_a_warning(tmp_path, old, new, waiver):
    text = textwrap.dedent(WORKFLOW).replace(old, new, 1)
    assert schemas._validator("github-workflows").is_valid(schemas._jsonable(yaml.safe_load(text))) is False
    o = _workflow(tmp_path, text)
    assert o.status == "document", o.detail
    assert [w for w in o.document.meta["warnings"] if waiver in w], o.document.meta["warnings"]


@pytest.mark.parametrize("body, waiver", [
    ("spec:\n  inputs:\n    n: {type: boolean}\n---\njob:\n  script: [make]\n  interruptible: $[[ inputs.n ]]\n", "computed at run time"),
    ("job:\n  script: [make]\n  coverage: '/(?i)total: (\\d+)%/'\n", "formats are ECMAScript"),
    ("variables:\n  EMPTY:\njob:\n  script: [make]\n", "YAML null"),
    ("include:\n  - template: Jobs/Deploy.gitlab-ci.yml\njob:\n  script: [make]\n  rules:\n    - !reference [.auto-deploy, rules]\n",
     "not fetched"),
])
def test_gitlab_runs_what_the_schema_refuses_and_it_is_kept_with_a_warning(tmp_path, body, waiver):
    o, _ = curate_text(tmp_path, ".gitlab-ci.yml", body)
    assert o.status == "document", o.detail
    assert [w for w in o.document.meta["warnings"] if waiver in w], o.document.meta["warnings"]


def test_a_waiver_does_not_hide_a_real_error_beside_it(tmp_path):
    """Expressions are waived where they stand; a wrong value elsewhere in the same job still fails."""
    text = textwrap.dedent(WORKFLOW).replace(
        "runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    services: ${{ fromJSON('{}') }}\n    timeout-minutes: soon")
    o = _workflow(tmp_path, text)
    assert o.reason == "invalid_github_actions" and "jobs.test.timeout-minutes" in o.detail, o.detail


# -- the verdict is check-jsonschema's, recorded and keyed -----------------------------------------------


def test_every_verdict_names_the_schema_it_came_from(tmp_path):
    o = _workflow(tmp_path, WORKFLOW)
    sid = o.document.meta["schema"]
    assert sid.startswith("check-jsonschema 0.39.0 github-workflows sha256:") and len(sid.rsplit(":", 1)[1]) == 16


def test_a_schema_update_recurates(monkeypatch):
    before = CurationSettings().key()
    monkeypatch.setattr(schemas, "schemas_key", lambda: "another schema")
    assert CurationSettings().key() != before


@needs_shared
def test_verdicts_without_waivers_are_check_jsonschemas_own(tmp_path):
    """The validator is built as the check-jsonschema CLI builds it: on SchemaStore's own positive
    and negative fixtures and actionlint's examples, each file's raw verdict equals the CLI's."""
    picked = sorted((CICD / "github-actions" / "SchemaStore").rglob("*.y*ml"))[:12]
    picked += sorted((CICD / "github-actions" / "rhysd-actionlint" / "testdata" / "examples").glob("*.y*ml"))[:12]
    assert len(picked) >= 12
    cli = Path(sys.executable).with_name("check-jsonschema")
    agree = 0
    for f in picked:
        try:
            doc = yaml.safe_load(f.read_text())
        except yaml.YAMLError:
            continue
        if not isinstance(doc, dict):
            continue
        ours = schemas._validator("github-workflows").is_valid(schemas._jsonable(doc))
        run = subprocess.run([str(cli), "--builtin-schema", "vendor.github-workflows", str(f)], capture_output=True, text=True)
        assert ours == (run.returncode == 0), (f, run.stdout[-400:])
        agree += 1
    assert agree >= 12
