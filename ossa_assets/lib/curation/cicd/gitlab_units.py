"""GitLab CI jobs as units: each visible job (or, in a template library, each template) as
GitLab runs it, with the globals it inherits."""

from __future__ import annotations

import json
import re
from typing import Any

from ossa_assets.lib.curation.cicd.common import (
    _as_list,
    _bounded,
    _context_name,
    _dynamic,
    _Invalid,
    _is_job_key,
    _jsonable,
    _title_text,
    _unit,
)
from ossa_assets.lib.curation.cicd.gitlab import (
    _DEFAULT_STAGES,
    _GITLAB_JOB_KEYS,
    _GitLab,
)
from ossa_assets.lib.curation.cicd.schemas import MAX_REPORTED, schema_id, validate
from ossa_assets.lib.curation.common import SourceContext, Unit

_VAR_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def _gitlab(relpath: str, top: dict, header: dict | None, ctx: SourceContext) -> tuple[list[Unit], dict]:
    gl = _GitLab(relpath, top, ctx)
    gl.lint_globals()
    stages, stages_known = gl.stages()
    stage_index = {s: i for i, s in enumerate(stages)}
    visible, hidden = [], []
    # GitLab runs the merged configuration: the jobs and templates of local includes count as
    # this pipeline's (a project that keeps its jobs in ci/*.yml has them nowhere else)
    top = gl.top
    for k, v in top.items():
        if not isinstance(k, str):
            raise _Invalid(f"top-level key {k!r} is not a job name")
        if not _is_job_key(k, v):
            continue
        if k.startswith("."):
            hidden.append(k)
        elif not isinstance(v, dict):
            raise _Invalid(f"{k}: job config should be a mapping")
        else:
            visible.append(k)
    hidden = [k for k in hidden if isinstance(top[k], dict) and "!reference" not in top[k]]
    for k in hidden:  # templates are part of the config: a cycle among them is an error too
        gl.resolve(k)
    resolved: dict[str, tuple[dict, list[str]]] = {}
    for k in visible:
        job, lineage = gl.resolve(k)
        job = gl.deref(job)
        gl.lint_job(k, job, stage_index, stages_known)
        resolved[k] = (job, lineage)
    # SchemaStore's gitlab-ci schema, on the configuration GitLab validates: includes merged,
    # !reference resolved, each job merged with its extends chain (hidden templates are free-form)
    merged = {k: gl.deref(v) for k, v in top.items() if k != "include" and not _is_job_key(k, v)}
    merged.update({k: job for k, (job, _) in resolved.items()})
    verdict = validate("gitlab_ci", merged)
    if verdict.errors:
        raise _Invalid(f"{verdict.schema} schema: " + " | ".join(verdict.errors[:MAX_REPORTED]))
    for w in verdict.waived:
        gl.warn(w)
    templates_only = not visible
    if templates_only:
        if not hidden and not gl.external and not gl.included:
            raise _Invalid("jobs config should contain at least one visible job")
        if not hidden:
            gl.warn("no jobs in this file: they come from its includes")
        for k in hidden:
            if set(map(str, top[k])) & _GITLAB_JOB_KEYS:  # not `.vars:` kept only for anchors
                job, lineage = gl.resolve(k)
                resolved[k] = (gl.deref(job), lineage)

    wf = top.get("workflow") if isinstance(top.get("workflow"), dict) else {}
    context = _title_text(wf.get("name")) if not _dynamic(wf.get("name")) else None
    context = context or _context_name(relpath, ctx.source)
    units: list[Unit] = []
    for k, (job, lineage) in resolved.items():
        stage = gl.stage_of(k, job) if not k.startswith(".") else job.get("stage", job.get("type"))
        title = f"{k} (stage {stage}) — {context}" if isinstance(stage, str) else f"{k} — {context}"
        body = _show_references(_gitlab_context(gl.top, k, job))
        needs = [n if isinstance(n, str) else n.get("job") or n.get("pipeline") or n.get("project")
                 for n in _as_list(job.get("needs")) if isinstance(n, (str, dict))]
        default = gl.top.get("default") if isinstance(gl.top.get("default"), dict) else {}
        image = job.get("image", default.get("image", gl.top.get("image")))
        if isinstance(image, dict):
            image = image.get("name")
        trigger = job.get("trigger")
        uses = [trigger] if isinstance(trigger, str) else (
            [trigger.get("project") or trigger.get("include")] if isinstance(trigger, dict) and (trigger.get("project") or trigger.get("include")) else []
        )
        meta = {
            "job": k, "stage": stage, "needs": needs, "uses": uses, "runs_on": job.get("tags"),
            "image": image if isinstance(image, str) else None, "extends": lineage,
        }
        if k.startswith("."):
            meta["template"] = True
        units.append(_unit(title, body, meta))
    meta = {
        "jobs": [k for k in resolved],
        "stages": [s for s in stages if s not in (".pre", ".post")] if "stages" in gl.top else _DEFAULT_STAGES,
        "templates": hidden,
        "includes": 1 if isinstance(gl.own.get("include"), dict) else len(_as_list(gl.own.get("include"))),
        "included_local": gl.included,
        # template/component/project/remote includes: never fetched; their jobs are unseen
        "external_includes": gl.external_includes,
        "warnings": gl.warnings,
        "schema": schema_id(verdict.schema),
    }
    if templates_only and resolved:
        meta["template_library"] = True
    if header and isinstance(header.get("spec"), dict) and isinstance(header["spec"].get("inputs"), dict):
        meta["spec_inputs"] = [str(i) for i in header["spec"]["inputs"]]
    return units, meta


def _gitlab_context(top: dict, name: str, job: dict) -> dict:
    """The job as GitLab runs it: merged with its extends chain, plus the globals it inherits
    (stages, default, the global variables it refers to) unless `inherit:` switches them off."""
    inherit = job.get("inherit") if isinstance(job.get("inherit"), dict) else {}
    out: dict = {}
    if isinstance(top.get("stages"), list):
        out["stages"] = top["stages"]
    gvars = top.get("variables") if isinstance(top.get("variables"), dict) else {}
    allowed = inherit.get("variables", True)
    if gvars and allowed is not False:
        wanted = _referenced_vars(job, gvars)
        if isinstance(allowed, list):
            wanted = [v for v in wanted if v in allowed]
        if wanted:
            out["variables"] = {v: gvars[v] for v in gvars if v in wanted}
    if inherit.get("default", True) is not False:
        if isinstance(top.get("default"), dict):
            out["default"] = {k: v for k, v in top["default"].items() if k not in job}
        for k in ("image", "services", "cache", "before_script", "after_script"):  # pre-`default:` globals
            if k in top and k not in job:
                out[k] = top[k]
    out[name] = {k: v for k, v in job.items() if k != "extends"}
    return out


def _show_references(o: Any) -> Any:
    """Unresolved `!reference` markers written back as GitLab spells them, for unit text."""
    if isinstance(o, dict):
        if len(o) == 1 and isinstance(o.get("!reference"), list):
            return "!reference [" + ", ".join(map(str, o["!reference"])) + "]"
        return {k: _show_references(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_show_references(v) for v in o]
    return o


def _referenced_vars(job: dict, gvars: dict) -> list[str]:
    text = json.dumps(_jsonable(_bounded(job)[0]))
    wanted: set[str] = set()
    frontier = set(_VAR_RE.findall(text)) & set(map(str, gvars))
    while frontier - wanted:  # a variable's value may itself refer to other global variables
        new = frontier - wanted
        wanted |= new
        frontier = set()
        for v in new:
            frontier |= set(_VAR_RE.findall(json.dumps(_jsonable(gvars.get(v))))) & set(map(str, gvars))
    return sorted(wanted)
