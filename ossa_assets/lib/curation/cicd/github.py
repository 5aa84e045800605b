"""GitHub Actions workflows: schema-level lint (SchemaStore's github-workflow schema and the
structural part of actionlint) and one unit per job."""

from __future__ import annotations

import re
from typing import Any

from ossa_assets.lib.curation.cicd.common import _as_list, _context_name, _Invalid, _is, _title_text, _unit
from ossa_assets.lib.curation.cicd.schemas import MAX_REPORTED, schema_id, validate
from ossa_assets.lib.curation.common import Unit

_GH_TOP = {"name", "run-name", "on", "permissions", "env", "defaults", "concurrency", "jobs"}
_GH_NORMAL_JOB = {
    "name", "needs", "snapshot", "permissions", "runs-on", "environment", "outputs", "env", "defaults",
    "if", "steps", "timeout-minutes", "strategy", "continue-on-error", "container", "services", "concurrency",
}
_GH_CALL_JOB = {"name", "needs", "permissions", "if", "uses", "with", "secrets", "strategy", "concurrency"}
_GH_STEP = {
    "id", "if", "name", "uses", "run", "working-directory", "shell", "with", "env", "continue-on-error",
    "timeout-minutes", "background", "wait", "wait-all", "cancel", "parallel",
}
_GH_STEP_KINDS = ("uses", "run", "wait", "wait-all", "cancel", "parallel")
_GH_CONTAINER = {"image", "credentials", "env", "ports", "volumes", "options"}
_GH_SERVICE = _GH_CONTAINER | {"command", "entrypoint"}
_GH_PERMISSION_SCOPES = {
    "actions", "artifact-metadata", "attestations", "checks", "code-quality", "contents", "deployments",
    "discussions", "id-token", "issues", "models", "packages", "pages", "pull-requests",
    "repository-projects", "security-events", "statuses",
}
_GH_FILTERS = {"branches", "branches-ignore", "tags", "tags-ignore", "paths", "paths-ignore"}
_PR_TYPES = {
    "assigned", "unassigned", "labeled", "unlabeled", "opened", "edited", "closed", "reopened",
    "synchronize", "converted_to_draft", "ready_for_review", "locked", "unlocked", "milestoned",
    "demilestoned", "review_requested", "review_request_removed", "auto_merge_enabled",
    "auto_merge_disabled", "enqueued", "dequeued",
}
_CED = {"created", "edited", "deleted"}
# Activity types per event (docs.github.com "Events that trigger workflows"); None = any/no types.
_GH_EVENTS: dict[str, set[str] | None] = {
    "branch_protection_rule": _CED,
    "check_run": {"created", "rerequested", "completed", "requested_action"},
    "check_suite": {"completed", "requested", "rerequested"},
    "create": None, "delete": None, "deployment": None, "deployment_status": None,
    "discussion": _CED | {"transferred", "pinned", "unpinned", "labeled", "unlabeled", "locked",
                          "unlocked", "category_changed", "answered", "unanswered"},
    "discussion_comment": _CED, "fork": None, "gollum": None, "issue_comment": _CED,
    "issues": {"opened", "edited", "deleted", "transferred", "pinned", "unpinned", "closed", "reopened",
               "assigned", "unassigned", "labeled", "unlabeled", "locked", "unlocked", "milestoned",
               "demilestoned", "typed", "untyped"},
    "label": _CED, "merge_group": {"checks_requested"},
    "milestone": {"created", "closed", "opened", "edited", "deleted"},
    "page_build": None, "project": {"created", "updated", "closed", "reopened", "edited", "deleted"},
    "project_card": {"created", "moved", "converted", "edited", "deleted"},
    "project_column": {"created", "updated", "moved", "deleted"},
    "public": None, "pull_request": _PR_TYPES, "pull_request_target": _PR_TYPES,
    "pull_request_review": {"submitted", "edited", "dismissed"},
    "pull_request_review_comment": _CED, "push": None,
    "registry_package": {"published", "updated"},
    "release": {"published", "unpublished", "created", "edited", "deleted", "prereleased", "released"},
    "repository_dispatch": None, "schedule": None, "status": None, "watch": {"started"},
    "workflow_call": None, "workflow_dispatch": None,
    "workflow_run": {"requested", "completed", "in_progress"},
    "image_version": None,
}
_GH_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_EXPR = re.compile(r"\$\{\{.*\}\}", re.S)
_REUSABLE = re.compile(r"^(\./|[^/@\s]+/[^/@\s]+/)(.+/)*[^/]+\.ya?ml(@\S+)?$")
_ACTION_REF = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[^@\s]+)?@\S+$")


_PLACEHOLDER = re.compile(r"^\$[a-z][a-z0-9-]*$")  # starter-workflow template variable, e.g. $codeql-languages-matrix


def _expr(v: Any) -> bool:
    """A value GitHub computes at run time (`${{ ... }}`), or a starter-workflow placeholder that
    is replaced before GitHub ever reads the file."""
    return isinstance(v, str) and bool(_EXPR.search(v) or _PLACEHOLDER.match(v.strip()))


def _github(relpath: str, wf: dict) -> tuple[list[Unit], dict]:
    wf = {("on" if k is True else k): v for k, v in wf.items()}
    # SchemaStore's github-workflows schema first: the structure GitHub accepts; the rules below
    # add what a schema cannot say (needs that name no job, cycles, activity types per event)
    verdict = validate("github_actions", wf, frozenset(_GH_EVENTS))
    if verdict.errors:
        raise _Invalid(f"{verdict.schema} schema: " + " | ".join(verdict.errors[:MAX_REPORTED]))
    warnings: list[str] = list(verdict.waived)
    unknown = set(map(str, wf)) - _GH_TOP
    if unknown:
        raise _Invalid(f"unknown top-level keys {sorted(unknown)}")
    events = _gh_on(wf["on"], warnings)
    if "permissions" in wf:
        _gh_permissions(wf["permissions"], "workflow")
    _gh_env(wf.get("env"), "workflow env")
    _gh_defaults(wf.get("defaults"), "workflow")
    jobs = wf.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        raise _Invalid("jobs must be a non-empty mapping of job ids to jobs")
    for jid, job in jobs.items():
        _gh_job(str(jid), job, jobs, warnings)
    _gh_cycles(jobs)

    wname = _title_text(wf.get("name")) or _context_name(relpath)
    context = {k: wf[k] for k in ("name", "on", "env", "defaults") if k in wf}
    units = []
    for jid, job in jobs.items():
        display = _title_text(job.get("name"))
        title = f"{display} ({jid})" if display and display != jid else str(jid)
        steps = job.get("steps") or []
        uses = [job["uses"]] if isinstance(job.get("uses"), str) else []
        uses += [s["uses"] for s in steps if isinstance(s, dict) and isinstance(s.get("uses"), str)]
        container = job.get("container")
        image = container.get("image") if isinstance(container, dict) else container
        meta = {
            "job": str(jid), "stage": None, "needs": _as_list(job.get("needs")),
            "uses": list(dict.fromkeys(uses)), "runs_on": job.get("runs-on"),
            "image": image if isinstance(image, str) else None, "steps": len(steps) if isinstance(steps, list) else 0,
        }
        units.append(_unit(f"{title} — {wname}", {**context, "jobs": {jid: job}}, meta))
    meta = {"jobs": [str(j) for j in jobs], "stages": [], "workflow_name": wname, "triggers": events,
            "warnings": warnings, "schema": schema_id(verdict.schema)}
    if "workflow_call" in events:
        meta["reusable"] = True
    return units, meta


def _gh_on(on: Any, warnings: list[str] | None = None) -> list[str]:
    if isinstance(on, str):
        on = [on]
    if isinstance(on, list):
        if not on:
            raise _Invalid("on: the event list is empty")
        for e in on:
            if not _is(e, _GH_EVENTS):
                raise _Invalid(f"on: unknown event {e!r}")
        return [str(e) for e in on]
    if not isinstance(on, dict) or not on:
        raise _Invalid("on: must be an event name, a list of events or a mapping of events")
    for ev, cfg in on.items():
        if not _is(ev, _GH_EVENTS):
            raise _Invalid(f"on: unknown event {ev!r}")
        where = f"on.{ev}"
        if ev == "schedule":
            if not isinstance(cfg, list) or not cfg:
                raise _Invalid(f"{where} must be a list of {{cron: ...}} entries")
            for c in cfg:
                if not isinstance(c, dict) or not isinstance(c.get("cron"), str) or set(c) - {"cron", "timezone"}:
                    raise _Invalid(f"{where}: each entry needs a cron string (and optionally timezone)")
            continue
        if cfg is None:
            continue
        if not isinstance(cfg, dict):
            raise _Invalid(f"{where} must be a mapping or empty")
        keys = set(map(str, cfg))
        if ev in ("push", "pull_request", "pull_request_target"):
            allowed = _GH_FILTERS | ({"types"} if ev != "push" else set())
            if keys - allowed:
                raise _Invalid(f"{where}: unknown keys {sorted(keys - allowed)} (expected {sorted(allowed)})")
            for f in ("branches", "tags", "paths"):
                if f in cfg and f"{f}-ignore" in cfg:
                    raise _Invalid(f"{where}: {f} and {f}-ignore cannot be used together")
        if ev == "workflow_dispatch":
            if keys - {"inputs"} and warnings is not None:
                # e.g. `branches:` copied from push: GitHub runs the workflow and ignores them
                warnings.append(f"{where}: keys GitHub ignores {sorted(keys - {'inputs'})}")
            _gh_inputs(cfg.get("inputs"), where, dispatch=True)
        if ev == "workflow_call":
            if keys - {"inputs", "outputs", "secrets"}:
                raise _Invalid(f"{where}: unknown keys {sorted(keys - {'inputs', 'outputs', 'secrets'})}")
            _gh_inputs(cfg.get("inputs"), where, dispatch=False)
            for part in ("outputs", "secrets"):
                if cfg.get(part) is not None and not isinstance(cfg[part], dict):
                    raise _Invalid(f"{where}.{part} must be a mapping")
            for oid, o in (cfg.get("outputs") or {}).items():
                if not isinstance(o, dict) or "value" not in o or set(o) - {"description", "value"}:
                    raise _Invalid(f"{where}.outputs.{oid}: needs `value` (and optionally description)")
            for sid, s in (cfg.get("secrets") or {}).items():
                if s is not None and (not isinstance(s, dict) or set(s) - {"description", "required"}):
                    raise _Invalid(f"{where}.secrets.{sid}: only description and required are allowed")
        allowed_types = _GH_EVENTS[ev]
        if "types" in cfg and allowed_types is not None:
            for t in _as_list(cfg["types"]):
                if not _is(t, allowed_types):
                    raise _Invalid(f"{where}: activity type {t!r} is not one of {sorted(allowed_types)}")
    return [str(e) for e in on]


def _gh_inputs(inputs: Any, where: str, dispatch: bool) -> None:
    if inputs is None:
        return
    if not isinstance(inputs, dict):
        raise _Invalid(f"{where}.inputs must be a mapping")
    types = {"string", "choice", "boolean", "number", "environment"} if dispatch else {"boolean", "number", "string"}
    allowed = {"description", "required", "default", "type"} | ({"options", "deprecationMessage"} if dispatch else set())
    for iid, spec in inputs.items():
        w = f"{where}.inputs.{iid}"
        if not _GH_ID.match(str(iid)):
            raise _Invalid(f"{w}: invalid input id")
        if spec is None and dispatch:
            continue
        if not isinstance(spec, dict):
            raise _Invalid(f"{w} must be a mapping")
        if set(map(str, spec)) - allowed:
            raise _Invalid(f"{w}: unknown keys {sorted(set(map(str, spec)) - allowed)}")
        t = spec.get("type")
        if t is None and not dispatch:
            raise _Invalid(f"{w}: workflow_call inputs must declare a type")
        if t is not None and not _is(t, types):
            raise _Invalid(f"{w}: type {t!r} is not one of {sorted(types)}")
        if t == "choice" and not (isinstance(spec.get("options"), list) and spec["options"]):
            raise _Invalid(f"{w}: a choice input needs a non-empty options list")
        if "default" in spec and t is not None and not _expr(spec["default"]):
            d = spec["default"]
            ok = {
                "boolean": isinstance(d, bool),
                "number": isinstance(d, (int, float)) and not isinstance(d, bool),
                "string": isinstance(d, str), "choice": isinstance(d, str), "environment": isinstance(d, str),
            }.get(t, True)
            if not ok:
                raise _Invalid(f"{w}: default {d!r} does not match type {t}")


def _gh_permissions(p: Any, where: str) -> None:
    if isinstance(p, str):
        if p not in ("read-all", "write-all") and not _expr(p):
            raise _Invalid(f"{where} permissions: {p!r} is neither read-all nor write-all")
        return
    if not isinstance(p, dict):
        raise _Invalid(f"{where} permissions must be read-all, write-all or a mapping of scopes")
    for scope, level in p.items():
        if not _is(scope, _GH_PERMISSION_SCOPES):
            raise _Invalid(f"{where} permissions: unknown scope {scope!r}")
        levels = ("read", "none") if scope == "models" else ("read", "write", "none")
        if not _is(level, levels):
            raise _Invalid(f"{where} permissions: {scope} level {level!r} is not one of {list(levels)}")


def _gh_env(env: Any, where: str) -> None:
    """env/with: a mapping of scalars, or one expression that yields one (`${{ fromJSON(...) }}`)."""
    if env is None or _expr(env):
        return
    if not isinstance(env, dict):
        raise _Invalid(f"{where} must be a mapping, not {type(env).__name__} {str(env)[:40]!r}")
    for k, v in env.items():
        if isinstance(v, (dict, list)):
            raise _Invalid(f"{where}.{k}: values must be strings, numbers or booleans")


def _gh_defaults(d: Any, where: str) -> None:
    if d is None:
        return
    if not isinstance(d, dict) or set(map(str, d)) - {"run"} or not isinstance(d.get("run"), dict) or (
        set(map(str, d["run"])) - {"shell", "working-directory"}
    ):
        raise _Invalid(f"{where} defaults must be {{run: {{shell, working-directory}}}}")


def _gh_job(jid: str, job: Any, jobs: dict, warnings: list[str]) -> None:
    if not _GH_ID.match(jid):
        raise _Invalid(f"job id {jid!r} must match {_GH_ID.pattern}")
    if not isinstance(job, dict):
        raise _Invalid(f"jobs.{jid} must be a mapping")
    keys = set(map(str, job))
    for n in _as_list(job.get("needs")):
        if not isinstance(n, str) or n not in jobs:
            raise _Invalid(f"jobs.{jid}: needs unknown job {n!r}")
        if n == jid:
            raise _Invalid(f"jobs.{jid}: needs itself")
    if "needs" in job and job["needs"] == []:
        raise _Invalid(f"jobs.{jid}: needs is an empty list")
    if "permissions" in job:
        _gh_permissions(job["permissions"], f"jobs.{jid}")
    if "uses" in job:
        if keys - _GH_CALL_JOB:
            raise _Invalid(f"jobs.{jid}: a reusable-workflow call does not take {sorted(keys - _GH_CALL_JOB)}")
        uses = job["uses"]
        if not isinstance(uses, str) or not (_REUSABLE.match(uses) or _expr(uses)):
            raise _Invalid(f"jobs.{jid}: uses {uses!r} is not ./path/workflow.yml or owner/repo/path/workflow.yml@ref")
        if not uses.startswith("./") and "@" not in uses and not _expr(uses):
            raise _Invalid(f"jobs.{jid}: uses {uses!r} lacks an @ref")
        _gh_env(job.get("with"), f"jobs.{jid}.with")
        sec = job.get("secrets")
        if sec is not None and sec != "inherit" and not isinstance(sec, dict):
            raise _Invalid(f"jobs.{jid}: secrets must be a mapping or `inherit`")
        return
    if keys - _GH_NORMAL_JOB:
        raise _Invalid(f"jobs.{jid}: unknown keys {sorted(keys - _GH_NORMAL_JOB)}")
    ro = job.get("runs-on")
    if ro is None or ro == "" or ro == []:
        raise _Invalid(f"jobs.{jid}: runs-on is missing or empty")
    if isinstance(ro, list) and not all(isinstance(r, str) for r in ro):
        raise _Invalid(f"jobs.{jid}: runs-on labels must be strings")
    if isinstance(ro, dict) and set(map(str, ro)) - {"group", "labels"}:
        raise _Invalid(f"jobs.{jid}: runs-on mapping takes only group and labels")
    if not isinstance(ro, (str, list, dict)):
        raise _Invalid(f"jobs.{jid}: runs-on must be a label, a list of labels or {{group, labels}}")
    _gh_env(job.get("env"), f"jobs.{jid}.env")
    _gh_defaults(job.get("defaults"), f"jobs.{jid}")
    c = job.get("container")
    if c is not None and not _expr(c):
        if isinstance(c, dict):
            if set(map(str, c)) - _GH_CONTAINER:
                raise _Invalid(f"jobs.{jid}.container: unknown keys {sorted(set(map(str, c)) - _GH_CONTAINER)}")
            _gh_env(c.get("env"), f"jobs.{jid}.container.env")
        elif not isinstance(c, str):
            raise _Invalid(f"jobs.{jid}.container must be an image or a mapping")
    services = job.get("services")
    if services is not None and not _expr(services):
        if not isinstance(services, dict):
            raise _Invalid(f"jobs.{jid}.services must be a mapping")
        for sid, s in services.items():
            if isinstance(s, dict) and set(map(str, s)) - _GH_SERVICE:
                raise _Invalid(f"jobs.{jid}.services.{sid}: unknown keys {sorted(set(map(str, s)) - _GH_SERVICE)}")
    strategy = job.get("strategy")
    if strategy is not None and not _expr(strategy):
        if not isinstance(strategy, dict) or set(map(str, strategy)) - {"matrix", "fail-fast", "max-parallel"}:
            raise _Invalid(f"jobs.{jid}.strategy takes matrix, fail-fast and max-parallel")
        m = strategy.get("matrix")
        if "matrix" not in strategy:
            warnings.append(f"jobs.{jid}.strategy has no matrix")  # GitHub runs it; the schema frowns
        elif not (isinstance(m, dict) and m or _expr(m)):
            raise _Invalid(f"jobs.{jid}.strategy.matrix must be a non-empty mapping or an expression")
    steps = job.get("steps")
    if steps is None:
        warnings.append(f"jobs.{jid}: no steps")
        return
    if not isinstance(steps, list) or not steps:
        raise _Invalid(f"jobs.{jid}.steps must be a non-empty list")
    for i, step in enumerate(steps):
        _gh_step(f"jobs.{jid}.steps[{i}]", step)


def _gh_step(where: str, step: Any) -> None:
    if not isinstance(step, dict):
        raise _Invalid(f"{where} must be a mapping")
    keys = set(map(str, step))
    if keys - _GH_STEP:
        raise _Invalid(f"{where}: unknown keys {sorted(keys - _GH_STEP)}")
    kinds = [k for k in _GH_STEP_KINDS if k in step]
    if len(kinds) != 1:
        raise _Invalid(f"{where}: a step needs exactly one of uses or run (has {kinds or 'neither'})")
    if ("shell" in step or "working-directory" in step) and "run" not in step:
        raise _Invalid(f"{where}: shell/working-directory only apply to run steps")
    if "uses" in step:
        u = step["uses"]
        if not isinstance(u, str) or not u.strip():
            raise _Invalid(f"{where}: uses must be a non-empty string")
        if not (u.startswith("./") or u.startswith("docker://") or _expr(u) or _ACTION_REF.match(u)):
            raise _Invalid(f"{where}: uses {u!r} is not owner/repo[/path]@ref, ./path or docker://image")
    if "run" in step and not isinstance(step["run"], (str, int, float)):
        raise _Invalid(f"{where}: run must be a string")
    _gh_env(step.get("env"), f"{where}.env")
    _gh_env(step.get("with"), f"{where}.with")


def _gh_cycles(jobs: dict) -> None:
    state: dict[str, int] = {}
    for start in jobs:
        if state.get(start):
            continue
        stack = [(start, iter(_as_list(jobs[start].get("needs"))))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise _Invalid(f"jobs: needs form a cycle through {nxt!r}")
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(_as_list(jobs[nxt].get("needs")))))
