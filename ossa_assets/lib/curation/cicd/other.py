"""Azure Pipelines, CircleCI and Tekton: light sanity checks and one unit per job or task."""

from __future__ import annotations

from typing import Any

from ossa_assets.lib.curation.cicd.common import _as_list, _context_name, _dynamic, _Invalid, _title_text, _unit
from ossa_assets.lib.curation.common import Unit


def _azure(relpath: str, d: dict) -> tuple[list[Unit], dict]:
    context = _title_text(d.get("name")) if not _dynamic(d.get("name")) else None
    context = context or _context_name(relpath)
    glob = {k: d[k] for k in ("trigger", "pr", "pool", "variables", "parameters") if k in d}
    units: list[Unit] = []
    jobs: list[str] = []
    stages: list[str] = []

    def add(job: dict, stage: str | None) -> None:
        name = job.get("job", job.get("deployment"))
        if not isinstance(name, str) and "template" in job:
            # the same template is often used several times: its scalar parameters tell them apart
            params = job.get("parameters") if isinstance(job.get("parameters"), dict) else {}
            shown = [f"{k}={str(v)[:40]}" for k, v in params.items() if isinstance(v, (str, int, float, bool))][:3]
            name = f"template {job['template']}" + (f" [{', '.join(shown)}]" if shown else "")
        if not isinstance(name, str) or not name.strip():
            return
        jobs.append(name)
        display = _title_text(job.get("displayName"))
        title = f"{display} ({name})" if display and display != name else name
        if stage:
            title += f" (stage {stage})"
        steps = _azure_steps(job)
        meta = {"job": name, "stage": stage, "needs": _as_list(job.get("dependsOn")),
                "uses": [s["task"] for s in steps if isinstance(s.get("task"), str)] + (
                    [job["template"]] if isinstance(job.get("template"), str) else []),
                "runs_on": job.get("pool", d.get("pool")), "image": None}
        body = {**glob, **({"stage": stage} if stage else {}), "jobs": [job]}
        units.append(_unit(f"{title} — {context}", body, meta))

    for item in _azure_items(d.get("stages")):
        if not isinstance(item, dict):
            raise _Invalid("stages: each entry must be a mapping")
        sname = item.get("stage")
        if isinstance(sname, str):
            stages.append(sname)
        for job in _azure_items(item.get("jobs")):
            if not isinstance(job, dict):
                raise _Invalid(f"stage {sname}: each job must be a mapping")
            add(job, sname if isinstance(sname, str) else None)
    for job in _azure_items(d.get("jobs")):
        if not isinstance(job, dict):
            raise _Invalid("jobs: each entry must be a mapping")
        add(job, None)
    if "steps" in d:
        if not isinstance(d["steps"], list):
            raise _Invalid("steps must be a list")
        jobs.append("steps")
        uses = [s["task"] for s in _azure_steps(d) if isinstance(s.get("task"), str)]
        meta = {"job": "steps", "stage": None, "needs": [], "uses": uses, "runs_on": d.get("pool"), "image": None}
        units.append(_unit(f"pipeline steps — {context}", {**glob, "steps": d["steps"]}, meta))
    if not jobs and not (isinstance(d.get("extends"), dict) and "template" in d["extends"]):
        raise _Invalid("no stages, jobs or steps")
    return units, {"jobs": jobs, "stages": stages, "warnings": []}


def _azure_items(v: Any) -> list:
    """List entries with `${{ if ... }}:` / `${{ each ... }}:` wrappers opened up (template
    expressions select entries at compile time; every branch is kept)."""
    out: list = []
    stack = [iter(v if isinstance(v, list) else [])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, dict) and item and all(isinstance(k, str) and k.startswith("${{") for k in item):
                for branch in item.values():
                    stack.append(iter(branch if isinstance(branch, list) else [branch]))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _azure_steps(job: dict) -> list[dict]:
    """Steps of a job, including deployment strategies' lifecycle hooks."""
    found: list[dict] = []
    stack: list[Any] = [job]
    while stack and len(found) < 500:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "steps" and isinstance(v, list):
                    found.extend(s for s in _azure_items(v) if isinstance(s, dict))
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)
    return found


def _circleci(relpath: str, d: dict) -> tuple[list[Unit], dict]:
    jobs = d.get("jobs")
    if "version" not in d:
        raise _Invalid("version is missing")
    if jobs is not None and not isinstance(jobs, dict):
        raise _Invalid("jobs must be a mapping")
    jobs = jobs or {}
    workflows = d.get("workflows") if isinstance(d.get("workflows"), dict) else {}
    warnings: list[str] = []
    requires: dict[str, list[str]] = {}
    used_in: dict[str, list[str]] = {}
    for wname, w in workflows.items():
        if not isinstance(w, dict):
            continue  # `version: 2` inside workflows
        for entry in _as_list(w.get("jobs")):
            name, cfg = (entry, {}) if isinstance(entry, str) else next(iter(entry.items())) if isinstance(entry, dict) and entry else (None, {})
            if not isinstance(name, str):
                raise _Invalid(f"workflow {wname}: job entries must be names")
            if name not in jobs and "/" not in name and not (isinstance(cfg, dict) and cfg.get("type") == "approval"):
                warnings.append(f"workflow {wname}: job {name!r} is not defined here")
            if isinstance(cfg, dict):
                requires.setdefault(name, []).extend(_as_list(cfg.get("requires")))
            used_in.setdefault(name, []).append(str(wname))
    if not jobs and not workflows:
        raise _Invalid("no jobs or workflows")
    units = []
    for name, job in jobs.items():
        if not isinstance(job, dict):
            raise _Invalid(f"jobs.{name} must be a mapping")
        if not isinstance(job.get("steps"), list) and "type" not in job:
            raise _Invalid(f"jobs.{name}: steps must be a list")
        wf = used_in.get(name)
        title = f"{name} (workflow {', '.join(wf)})" if wf else str(name)
        ex = job.get("executor")
        ex_name = ex.get("name") if isinstance(ex, dict) else ex
        body: dict = {"version": d["version"]}
        if "orbs" in d:
            body["orbs"] = d["orbs"]
        if isinstance(ex_name, str) and isinstance(d.get("executors"), dict) and ex_name in d["executors"]:
            body["executors"] = {ex_name: d["executors"][ex_name]}
        body["jobs"] = {name: job}
        docker = job.get("docker")
        image = docker[0].get("image") if isinstance(docker, list) and docker and isinstance(docker[0], dict) else None
        meta = {"job": str(name), "stage": None, "needs": requires.get(name, []),
                "uses": [next(iter(s)) for s in job.get("steps") or [] if isinstance(s, dict) and s and "/" in str(next(iter(s)))],
                "runs_on": ex_name if isinstance(ex_name, str) else None, "image": image}
        units.append(_unit(f"{title} — {_context_name(relpath)}", body, meta))
    return units, {"jobs": [str(j) for j in jobs], "stages": [], "workflows": [str(w) for w in workflows if w != "version"], "warnings": warnings}


def _tekton(relpath: str, docs: list) -> tuple[list[Unit], dict]:
    units: list[Unit] = []
    jobs: list[str] = []
    kinds: list[str] = []
    for d in docs:
        if not isinstance(d, dict) or not str(d.get("apiVersion", "")).startswith("tekton.dev/"):
            continue
        kind = d.get("kind")
        name = (d.get("metadata") or {}).get("name") if isinstance(d.get("metadata"), dict) else None
        spec = d.get("spec")
        if not isinstance(kind, str) or not isinstance(spec, dict):
            raise _Invalid("a Tekton resource needs kind and a spec mapping")
        kinds.append(kind)
        spec = spec.get("pipelineSpec", spec) if kind == "PipelineRun" else spec
        if kind in ("Pipeline", "PipelineRun"):
            tasks = _as_list(spec.get("tasks")) + _as_list(spec.get("finally"))
            names = [t.get("name") for t in tasks if isinstance(t, dict)]
            if not tasks or len(names) != len(tasks) or not all(isinstance(n, str) for n in names):
                raise _Invalid(f"{kind} {name}: tasks must be a non-empty list of named tasks")
            for t in tasks:
                for after in _as_list(t.get("runAfter")):
                    if after not in names:
                        raise _Invalid(f"{kind} {name}: task {t['name']} runs after unknown task {after!r}")
                jobs.append(t["name"])
                image = next((s.get("image") for s in _as_list((t.get("taskSpec") or {}).get("steps")) if isinstance(s, dict)), None)
                ref = t.get("taskRef") if isinstance(t.get("taskRef"), dict) else {}
                uses = [ref.get("name")] if isinstance(ref.get("name"), str) else [
                    p.get("value") for p in _as_list(ref.get("params")) if isinstance(p, dict) and p.get("name") == "name"]
                meta = {"job": t["name"], "stage": "finally" if t in _as_list(spec.get("finally")) else None,
                        "needs": _as_list(t.get("runAfter")), "uses": [u for u in uses if isinstance(u, str)],
                        "runs_on": None, "image": image if isinstance(image, str) else None}
                body = {"kind": kind, "metadata": {"name": name}, "spec": {"params": spec.get("params", []), "tasks": [t]}}
                units.append(_unit(f"{t['name']} — Tekton {kind.lower()} {name or _context_name(relpath)}", body, meta))
        elif kind in ("Task", "ClusterTask", "TaskRun"):
            spec = spec.get("taskSpec", spec) if kind == "TaskRun" else spec
            steps = spec.get("steps")
            if not isinstance(steps, list) or not steps:
                raise _Invalid(f"{kind} {name}: steps must be a non-empty list")
            label = name or _context_name(relpath)
            desc = _title_text(spec.get("description"))
            jobs.append(label)
            image = next((s.get("image") for s in steps if isinstance(s, dict)), None)
            meta = {"job": label, "stage": None, "needs": [], "uses": [], "runs_on": None,
                    "image": image if isinstance(image, str) else None}
            title = f"{label} — Tekton {kind.lower()}" + (f": {desc.splitlines()[0][:120]}" if desc else "")
            units.append(_unit(title, d, meta))
    if not kinds:
        raise _Invalid("no Tekton resource")
    return units, {"jobs": jobs, "stages": [], "kinds": kinds, "warnings": []}
