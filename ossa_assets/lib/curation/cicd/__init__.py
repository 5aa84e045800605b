"""CI/CD pipeline curation: GitLab CI, GitHub Actions, Azure Pipelines, CircleCI and Tekton.

`curate_file(relpath, raw, ctx)` turns one file of a `cicd/` source into a `FileOutcome`: a
`ParsedDocument` with one `job` unit per job, or a rejection. Nothing is fetched or executed:
GitLab `include:` entries are only checked for form (a `local:` include that lies inside the
source is read through `ctx.read`, so the outcome depends on it). GitHub workflows and GitLab's
merged configuration are validated against the platforms' published schemas (schemas.py, with
the waivers where the platform accepts what the schema refuses); the curators' own rules add
what a schema cannot say, as `gitlab-ci lint` and actionlint do. Errors reject the file; softer
findings go to `meta["warnings"]`.

Reason codes (besides common.py's empty | too_large | binary | not_utf8 | malformed_yaml |
yaml_unsafe_tag | yaml_alias_bomb | too_deep and prose.py's too_short):
    not_pipeline            YAML/JSON that is no pipeline of a supported system (action.yml,
                            variables files, AppVeyor, Kubernetes manifests, ...), including the
                            starter-workflow catalogue entries `properties/*.properties.json`: their
                            workflow reads them (meta["starter_properties"]), so the caller counts
                            them as that document's fragments
    unsupported_format      a suffix this curator does not read (.json schemas, .out, ...)
    invalid_gitlab_ci       GitLab CI that GitLab would refuse (detail: the first error)
    invalid_github_actions  a GitHub Actions workflow GitHub would refuse
    invalid_pipeline        Azure Pipelines, CircleCI or Tekton failing the light sanity check
    curator_error           an unexpected exception (detail: its type name)
"""

from __future__ import annotations

import posixpath
from typing import Any

from ossa_assets.lib.curation import prose

# `noqa: F401`: these imports also re-export the names of the module this package replaced.
from ossa_assets.lib.curation.cicd.common import (  # noqa: F401
    _GITLAB_GLOBALS,
    _GITLAB_JOB_MARKERS,
    MAX_REFERENCE_NODES,
    MAX_TITLE_CHARS,
    MAX_UNIT_CHARS,
    MAX_UNIT_NODES,
    MAX_WARNINGS,
    YAML_SUFFIXES,
    _Invalid,
    _jsonable,
    _starter_properties,
)
from ossa_assets.lib.curation.cicd.github import _github
from ossa_assets.lib.curation.cicd.gitlab_units import _gitlab
from ossa_assets.lib.curation.cicd.other import _azure, _circleci, _tekton
from ossa_assets.lib.curation.common import (  # noqa: F401
    FileOutcome,
    ParsedDocument,
    Rejected,
    SourceContext,
    Unit,
    decode_text,
    dump_yaml,
    safe_json_load,
    safe_yaml_load_all,
    spdx_license,
)


def curate_file(relpath: str, raw: bytes, ctx: SourceContext) -> FileOutcome:
    """One file of a CI/CD source as a document with job units, or a rejection. Never raises."""
    try:
        return FileOutcome(relpath, "document", document=_curate(relpath, raw, ctx))
    except Rejected as r:
        return FileOutcome.rejected(relpath, r)
    except RecursionError:
        return FileOutcome.rejected(relpath, Rejected("too_deep", "structure exceeds the recursion limit"))
    except Exception as e:  # a curator bug must cost one file, not the whole source
        return FileOutcome.rejected(relpath, Rejected("curator_error", type(e).__name__))


def _curate(relpath: str, raw: bytes, ctx: SourceContext) -> ParsedDocument:
    name = posixpath.basename(relpath).lower()
    if name.endswith(prose.PROSE_SUFFIXES):
        return prose.curate_prose(relpath, decode_text(raw, ctx.limits), ctx.limits.max_units)
    if name.endswith(".properties.json") and "/properties/" in f"/{relpath}":
        # Parsed anyway so a broken catalogue entry shows as malformed, not as metadata.
        safe_json_load(decode_text(raw, ctx.limits), ctx.limits)
        raise Rejected("not_pipeline", "starter-workflow metadata (name/description/categories) of a workflow")
    if not name.endswith(YAML_SUFFIXES):
        raise Rejected("unsupported_format", f"suffix of {posixpath.basename(relpath)!r} is not curated")
    text = decode_text(raw, ctx.limits)
    docs = [d for d in safe_yaml_load_all(text, ctx.limits) if d is not None]
    if not docs:
        raise Rejected("empty", "no YAML document")
    header: dict | None = None
    if len(docs) == 2 and isinstance(docs[0], dict) and set(docs[0]) == {"spec"}:
        header, docs = docs[0], docs[1:]  # GitLab CI/CD component: `spec:` inputs, then the body
    if all(isinstance(d, dict) and not d for d in docs):
        raise Rejected("empty", "the document is an empty mapping")

    if any(isinstance(d, dict) and str(d.get("apiVersion", "")).startswith("tekton.dev/") for d in docs):
        fmt, body = "tekton", docs
    else:
        body = next((d for d in docs if isinstance(d, dict) and d), None)
        if body is None:
            raise Rejected("not_pipeline", f"top level is a {type(docs[0]).__name__}, not a mapping")
        fmt = _classify(relpath, body)
    try:
        if fmt == "github_actions":
            units, meta = _github(relpath, body)
        elif fmt == "gitlab_ci":
            units, meta = _gitlab(relpath, body, header, ctx)
        elif fmt == "azure_pipelines":
            units, meta = _azure(relpath, body)
        elif fmt == "circleci":
            units, meta = _circleci(relpath, body)
        else:
            units, meta = _tekton(relpath, body)
    except _Invalid as e:
        reason = f"invalid_{fmt}" if fmt in ("gitlab_ci", "github_actions") else "invalid_pipeline"
        detail = str(e) if reason != "invalid_pipeline" else f"{fmt}: {e}"
        raise Rejected(reason, detail) from None
    meta["warnings"] = meta.get("warnings", [])[:MAX_WARNINGS]
    if len(units) > ctx.limits.max_units:
        units = units[: ctx.limits.max_units]
        meta["units_truncated"] = True
    if fmt == "github_actions":
        meta.update(_starter_properties(relpath, ctx))
    return ParsedDocument(format=fmt, text=text, units=units, license=spdx_license(text), meta=_jsonable(meta))


# -- classification ---------------------------------------------------------------------------------


def _gitlab_name(relpath: str) -> bool:
    name = posixpath.basename(relpath)
    return name == ".gitlab-ci.yml" or name.endswith(".gitlab-ci.yml")


def _classify(relpath: str, d: dict) -> str:
    path = f"/{relpath}"
    if "apiVersion" in d and "kind" in d:
        raise Rejected("not_pipeline", f"Kubernetes-style manifest of kind {d.get('kind')!r}")
    has_on = "on" in d or True in d  # YAML 1.1 reads the bare key `on` as boolean True
    jobs = d.get("jobs")
    if "jobs" in d and has_on:
        return "github_actions"
    if "/.circleci/" in path or ("version" in d and isinstance(jobs, dict) and ("workflows" in d or "orbs" in d)):
        return "circleci"
    if "/.github/workflows/" in path and ("jobs" in d or has_on):
        return "github_actions"  # a workflow file missing `on` or `jobs` is a broken workflow
    if isinstance(jobs, dict) and jobs and all(
        isinstance(j, dict) and ("runs-on" in j or "steps" in j or "uses" in j) for j in jobs.values()
    ):
        return "github_actions"  # GitHub-shaped jobs without a trigger: the lint will say so
    stages = d.get("stages")
    if isinstance(d.get("steps"), list) or isinstance(jobs, list) or (
        isinstance(stages, list) and any(isinstance(s, dict) and ("stage" in s or "template" in s) for s in stages)
    ) or (isinstance(d.get("extends"), dict) and "template" in d["extends"]):
        return "azure_pipelines"
    if _gitlab_name(relpath):
        return "gitlab_ci"
    if "include" in d or isinstance(d.get("workflow"), dict) or (
        isinstance(stages, list) and stages and all(isinstance(s, str) for s in stages)
    ):
        return "gitlab_ci"
    for k, v in d.items():
        if k not in _GITLAB_GLOBALS and isinstance(v, dict) and (_GITLAB_JOB_MARKERS & set(v) or _has_reference(v)):
            return "gitlab_ci"
    if posixpath.basename(relpath).lower() == "appveyor.yml" or "build_script" in d:
        raise Rejected("not_pipeline", "AppVeyor configuration: CI system not curated")
    if "runs" in d and ("name" in d or "description" in d):
        raise Rejected("not_pipeline", "GitHub Action metadata (action.yml), not a workflow")
    raise Rejected("not_pipeline", "no GitHub/GitLab/Azure/CircleCI/Tekton pipeline structure")


def _has_reference(v: Any) -> bool:
    stack = [v]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if "!reference" in o:
                return True
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return False
