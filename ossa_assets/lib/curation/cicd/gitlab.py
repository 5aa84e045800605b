"""GitLab CI's configuration as GitLab reads it: local includes merged, `extends` chains and
`!reference` tags resolved (budgeted), and the structural lint of `gitlab-ci lint`."""

from __future__ import annotations

import posixpath
import re
from typing import Any

from ossa_assets.lib.curation.cicd.common import (
    MAX_REFERENCE_NODES,
    _as_list,
    _dynamic,
    _Invalid,
    _is,
    _is_job_key,
)
from ossa_assets.lib.curation.common import Rejected, SourceContext, decode_text, safe_yaml_load_all

_GITLAB_JOB_KEYS = {
    "after_script", "allow_failure", "artifacts", "before_script", "cache", "coverage",
    "dast_configuration", "dependencies", "environment", "except", "extends", "hooks", "id_tokens",
    "identity", "image", "inherit", "interruptible", "manual_confirmation", "needs", "only", "pages",
    "parallel", "release", "resource_group", "retry", "rules", "run", "script", "secrets", "services",
    "stage", "start_in", "tags", "timeout", "trigger", "variables", "when", "type",
}
_DEFAULT_KEYS = {
    "after_script", "artifacts", "before_script", "cache", "hooks", "id_tokens", "image",
    "interruptible", "retry", "services", "tags", "timeout",
}
_JOB_RULE_KEYS = {"if", "changes", "exists", "when", "allow_failure", "variables", "needs", "start_in", "interruptible"}
_OTHER_RULE_KEYS = {"if", "changes", "exists", "when", "variables", "auto_cancel"}  # workflow: / include:
_WHEN = {"on_success", "on_failure", "always", "manual", "delayed", "never"}
_INCLUDE_KINDS = ("local", "project", "remote", "template", "component")
_INCLUDE_EXTRA = {"rules", "inputs", "ref", "file", "integrity", "cache"}
_DEFAULT_STAGES = ["build", "test", "deploy"]
_MAX_EXTENDS_DEPTH = 11  # GitLab: "extends ... up to 11 levels of inheritance"
_MAX_REFERENCE_LEVELS = 10  # GitLab: "!reference tags can be nested up to 10 levels"
_MAX_INCLUDED_FILES = 32


class _GitLab:
    def __init__(self, relpath: str, top: dict, ctx: SourceContext):
        self.relpath = relpath
        self.ctx = ctx
        self.own = top
        self.warnings: list[str] = []
        self.external = False  # an include we cannot see may define jobs, templates or stages
        self.included: list[str] = []
        self.external_includes: list[dict[str, str]] = []
        merged: dict = {}
        self._includes(top.get("include"), relpath, merged, set(), 0)
        self.top = _deep_merge(merged, top) if merged else top
        self.all_jobs = {k: v for k, v in self.top.items() if _is_job_key(k, v)}
        self._resolved: dict[str, tuple[dict, list[str]]] = {}
        self.incomplete: set[str] = set()  # jobs whose extends chain reaches an unseen template
        self._budget = MAX_REFERENCE_NODES

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def missing(self, msg: str) -> None:
        """A reference this file cannot satisfy: an error, unless an unseen include may satisfy it."""
        if self.external:
            self.warn(msg + " (may come from an include)")
        else:
            raise _Invalid(msg)

    # -- include ------------------------------------------------------------------------------------

    def _includes(self, inc: Any, base: str, into: dict, seen: set[str], depth: int) -> None:
        for entry in _as_list(inc) if not isinstance(inc, dict) else [inc]:
            if isinstance(entry, dict) and "!reference" in entry:
                self.external = True
                continue
            try:
                kind, target = self._include_form(entry)
            except _Invalid as e:
                if depth == 0:
                    raise
                self.warn(f"{base}: {e}")  # the included file answers for its own includes
                self.external = True
                continue
            if kind != "local" or _dynamic(target) or depth >= 5:
                self.external = True
                if kind != "local" and len(self.external_includes) < _MAX_INCLUDED_FILES:
                    self.external_includes.append({kind: str(target)[:200]})
                continue
            for path in self._local_paths(target):
                if path in seen or len(seen) >= _MAX_INCLUDED_FILES:
                    continue
                seen.add(path)
                top = self._load_included(path)
                if top is None:
                    self.external = True
                    continue
                self.included.append(path)
                self._includes(top.get("include"), path, into, seen, depth + 1)
                into.update(_deep_merge(into, {k: v for k, v in top.items() if k != "include"}))

    def _include_form(self, entry: Any) -> tuple[str, Any]:
        if isinstance(entry, str):
            if not entry.strip():
                raise _Invalid("include: empty entry")
            return ("remote" if re.match(r"https?://", entry) else "local"), entry.strip()
        if not isinstance(entry, dict):
            raise _Invalid(f"include: entry must be a string or a mapping, not {type(entry).__name__}")
        kinds = [k for k in _INCLUDE_KINDS if k in entry]
        if len(kinds) != 1:
            raise _Invalid(f"include: entry needs exactly one of {', '.join(_INCLUDE_KINDS)} (has {sorted(map(str, entry))})")
        unknown = set(map(str, entry)) - set(_INCLUDE_KINDS) - _INCLUDE_EXTRA
        if unknown:
            raise _Invalid(f"include: {kinds[0]} entry has unknown keys {sorted(unknown)}")
        if kinds[0] == "project" and "file" not in entry:
            raise _Invalid("include: project entry needs `file`")
        if kinds[0] != "project" and not isinstance(entry[kinds[0]], str):
            raise _Invalid(f"include: {kinds[0]} must be a string")
        if "rules" in entry:
            self._rules(entry["rules"], "include", _OTHER_RULE_KEYS)
        return kinds[0], entry[kinds[0]]

    def _local_paths(self, target: Any) -> list[str]:
        """Local include paths are relative to the project root: here, the curated file's folder."""
        root = posixpath.dirname(self.relpath)
        ref = target.lstrip("/")
        if "*" in ref:
            pattern = re.compile(
                re.escape(posixpath.join(root, ref)).replace(r"\*\*", ".*").replace(r"\*", "[^/]*") + "$"
            )
            return [f for f in self.ctx.files() if pattern.match(f) and f != self.relpath][:_MAX_INCLUDED_FILES]
        try:
            path = self.ctx.resolve(posixpath.join(root, "x"), ref)
        except Rejected:
            return []
        if not self.ctx.exists(path):
            self.warn(f"include: local {target!r} is not in the source")
            self.external = True
            return []
        return [path]

    def _load_included(self, path: str) -> dict | None:
        try:
            docs = [d for d in safe_yaml_load_all(decode_text(self.ctx.read(path), self.ctx.limits), self.ctx.limits) if d]
        except Rejected as r:
            self.warn(f"include: {path} unreadable ({r.reason})")
            return None
        top = docs[-1] if docs else None
        return top if isinstance(top, dict) else None

    # -- extends and !reference ---------------------------------------------------------------------

    def resolve(self, name: str, chain: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
        """The job merged with its `extends` chain (GitLab deep-merges mappings, later wins), and
        the chain's job names in merge order."""
        if name in self._resolved:
            return self._resolved[name]
        if name in chain:
            raise _Invalid(f"{chain[0]}: circular extends chain {' -> '.join(chain + (name,))}")
        if len(chain) > _MAX_EXTENDS_DEPTH:
            raise _Invalid(f"{chain[0]}: extends nested deeper than {_MAX_EXTENDS_DEPTH} levels")
        job = self.all_jobs[name]
        merged: dict = {}
        lineage: list[str] = []
        parents = job.get("extends")
        if parents is not None and not (isinstance(parents, str) or (isinstance(parents, list) and all(isinstance(p, str) for p in parents))):
            raise _Invalid(f"{name}: extends must be a job name or a list of job names")
        for parent in _as_list(parents):
            if parent not in self.all_jobs or not isinstance(self.all_jobs[parent], dict):
                self.missing(f"{name}: extends unknown job {parent!r}")
                self.incomplete.add(name)
                lineage.append(parent)
                continue
            pm, pl = self.resolve(parent, chain + (name,))
            if parent in self.incomplete:
                self.incomplete.add(name)
            merged = _deep_merge(merged, pm)
            lineage += [p for p in pl if p not in lineage] + [parent]
        merged = _deep_merge(merged, {k: v for k, v in job.items() if k != "extends"})
        self._resolved[name] = (merged, lineage)
        return merged, lineage

    def deref(self, value: Any, level: int = 1, seen: tuple[tuple, ...] = ()) -> Any:
        """`value` with every `!reference [job, key, ...]` replaced by what it points to; in a
        list a referenced list is spliced in, as GitLab does for script and rules. Expansion is
        budgeted: ten levels of references that each repeat the level below grow exponentially."""
        self._budget -= len(value) if isinstance(value, (list, dict)) else 1
        if self._budget < 0:
            raise _Invalid(f"!reference expansion exceeds {MAX_REFERENCE_NODES} nodes")
        if isinstance(value, dict):
            if "!reference" in value and len(value) == 1:
                return self._lookup(value["!reference"], level, seen)
            rest = {k: self.deref(v, level, seen) for k, v in value.items() if k != "!reference"}
            if "!reference" in value:
                # `variables: !reference [...]` in a template, extended by a job with variables of
                # its own: the extends merge put both in one mapping; the job's keys win
                base = self._lookup(value["!reference"], level, seen)
                return _deep_merge(base, rest) if isinstance(base, dict) and "!reference" not in base else value
            return rest
        if isinstance(value, list):
            out: list = []
            for item in value:
                is_ref = isinstance(item, dict) and "!reference" in item and len(item) == 1
                r = self.deref(item, level, seen)
                if is_ref and isinstance(r, list):
                    out.extend(r)
                else:
                    out.append(r)
            return out
        return value

    def _lookup(self, path: Any, level: int, seen: tuple[tuple, ...]) -> Any:
        if not isinstance(path, list) or not path or not all(isinstance(p, (str, int)) for p in path):
            raise _Invalid(f"!reference {path!r} must be a list of names")
        key = tuple(path)
        shown = "!reference [" + ", ".join(map(str, path)) + "]"
        if key in seen:
            raise _Invalid(f"{shown}: circular reference")
        if level > _MAX_REFERENCE_LEVELS - 1:
            raise _Invalid(f"{shown}: !reference nested deeper than {_MAX_REFERENCE_LEVELS} levels")
        found, node = self._walk(self.top, path)
        if not found and path[0] in self.all_jobs and isinstance(self.all_jobs[path[0]], dict):
            found, node = self._walk({path[0]: self.resolve(path[0])[0]}, path)
        if not found:
            self.missing(f"{shown} points at nothing in this file")
            return {"!reference": path}  # kept as written; only an unseen include can fill it
        return self.deref(node, level + 1, seen + (key,))

    @staticmethod
    def _walk(root: Any, path: list) -> tuple[bool, Any]:
        node = root
        for p in path:
            if isinstance(node, dict) and p in node:
                node = node[p]
            elif isinstance(node, list) and isinstance(p, int) and -len(node) <= p < len(node):
                node = node[p]  # gitlab-ci-local also indexes lists; GitLab itself only maps
            else:
                return False, None
        return True, node

    # -- lint -----------------------------------------------------------------------------------------

    def _rules(self, rules: Any, where: str, allowed: set[str]) -> None:
        if (isinstance(rules, dict) and "!reference" in rules) or _dynamic(rules):
            return  # an unseen template, or a component input interpolated at pipeline time
        if not isinstance(rules, list):
            raise _Invalid(f"{where}: rules must be a list")
        for r in rules:
            if isinstance(r, dict) and "!reference" in r:
                continue  # resolved and checked on the job after deref
            if not isinstance(r, dict):
                raise _Invalid(f"{where}: each rule must be a mapping, got {type(r).__name__}")
            unknown = set(map(str, r)) - allowed
            if unknown:
                raise _Invalid(f"{where}: rule has unknown keys {sorted(unknown)}")
            if "when" in r and not _is(r["when"], _WHEN):
                raise _Invalid(f"{where}: rule when {r['when']!r} is not one of {sorted(_WHEN)}")

    def stages(self) -> tuple[list[str], bool]:
        """The pipeline's stages and whether they are known (declared, or defaults with nothing unseen)."""
        stages = self.top.get("stages", self.top.get("types"))
        if stages is None:
            return [".pre"] + _DEFAULT_STAGES + [".post"], not self.external
        stages = self.deref(stages)
        if not isinstance(stages, list) or not all(isinstance(s, str) for s in _flatten(stages)):
            raise _Invalid("stages must be a list of stage names")
        return [".pre"] + [s for s in _flatten(stages) if s not in (".pre", ".post")] + [".post"], True

    def lint_globals(self) -> None:
        for key in ("variables",):
            v = self.own.get(key)
            if v is not None and not isinstance(v, dict):
                raise _Invalid(f"{key} must be a mapping")
        wf = self.own.get("workflow")
        if wf is not None:
            if not isinstance(wf, dict):
                raise _Invalid("workflow must be a mapping")
            if "rules" in wf:
                self._rules(wf["rules"], "workflow", _OTHER_RULE_KEYS)
        default = self.own.get("default")
        if default is not None:
            if not isinstance(default, dict):
                raise _Invalid("default must be a mapping")
            unknown = set(map(str, default)) - _DEFAULT_KEYS
            if unknown:
                self.warn(f"default: unknown keys {sorted(unknown)}")
        if "spec" in self.own and not _is_job_key("spec", self.own["spec"]):
            self.warn("spec: belongs in a header document before `---`")

    def lint_job(self, name: str, job: dict, stage_index: dict[str, int], stages_known: bool) -> None:
        unknown = set(map(str, job)) - _GITLAB_JOB_KEYS
        if unknown:
            self.warn(f"{name}: unknown keys {sorted(unknown)}")
        has_unseen_parent = name in self.incomplete
        if "script" in job:
            if not _flatten(_as_list(job["script"])) or job["script"] == "":
                raise _Invalid(f"{name}: script can't be blank")
        elif "trigger" not in job and "run" not in job:
            msg = f"{name}: job has no script, trigger or run"
            if has_unseen_parent:
                self.warn(msg + " (its extends may come from an include)")
            elif self.external:
                # e.g. `sast: {variables: …}` overriding the job a `template:` include defines:
                # GitLab merges the two, so the script is in the part we must not fetch
                self.warn(msg + " (it may override a job of an include that is not fetched)")
            else:
                raise _Invalid(msg)
        if "rules" in job:
            if "only" in job or "except" in job:
                raise _Invalid(f"{name}: only/except may not be used with rules")
            self._rules(job["rules"], name, _JOB_RULE_KEYS)
        if "when" in job and not _is(job["when"], _WHEN):
            raise _Invalid(f"{name}: when {job['when']!r} is not one of {sorted(_WHEN)}")
        for key in ("cache", "artifacts"):
            for c in _as_list(job.get(key)):
                if isinstance(c, dict) and "paths" in c and not isinstance(c["paths"], list):
                    raise _Invalid(f"{name}: {key}:paths must be a list")
        stage = self.stage_of(name, job)
        if stage is not None and not isinstance(stage, str):
            raise _Invalid(f"{name}: stage must be a string")
        my_index = stage_index.get(stage) if stage is not None else None
        if stage is not None and my_index is None and not _dynamic(stage):
            msg = f"{name}: stage {stage!r} is not in stages"
            if stages_known:
                raise _Invalid(msg)
            self.warn(msg)
        needed = {n for n in map(self._need_name, _as_list(job.get("needs"))) if isinstance(n, str)}
        for kind in ("needs", "dependencies"):
            if kind not in job:
                continue
            entries = job[kind]
            if not isinstance(entries, list):
                raise _Invalid(f"{name}: {kind} must be a list")
            for e in entries:
                target = self._need_target(name, kind, e)
                if target is None:
                    continue
                if target == name:
                    raise _Invalid(f"{name}: {kind} names the job itself")
                other = self.all_jobs.get(target)
                if not isinstance(other, dict) or target.startswith("."):
                    self.missing(f"{name}: {kind} names unknown job {target!r}")
                    continue
                if kind == "dependencies" and isinstance(job.get("needs"), list) and job["needs"]:
                    # with needs, artifacts can only come from needed jobs (any stage)
                    if target not in needed:
                        raise _Invalid(f"{name}: dependency {target!r} should be part of needs")
                    continue
                other_stage = self.stage_of(target, self.resolve(target)[0])
                oi = stage_index.get(other_stage) if isinstance(other_stage, str) else None
                too_late = oi is not None and my_index is not None and (oi > my_index or (kind == "dependencies" and oi == my_index))
                if too_late:
                    raise _Invalid(f"{name}: {kind} {target!r} is not defined in current or prior stages")

    def stage_of(self, name: str, job: dict) -> Any:
        """The job's stage; None when it may come from a template we cannot see."""
        if "stage" in job or "type" in job:
            return job.get("stage", job.get("type"))
        return None if name in self.incomplete else "test"

    @staticmethod
    def _need_name(e: Any) -> Any:
        return e.get("job") if isinstance(e, dict) else e

    def _need_target(self, name: str, kind: str, e: Any) -> str | None:
        if e is None or e == "":
            raise _Invalid(f"{name}: {kind} entries cannot be empty")
        if isinstance(e, str):
            return None if _dynamic(e) else _matrix_base(e, self.all_jobs)
        if kind == "needs" and isinstance(e, dict):
            if "pipeline" in e or "project" in e or e.get("optional") is True:
                return None
            job = e.get("job")
            if not isinstance(job, str) or not job:
                raise _Invalid(f"{name}: needs entry needs a `job` name")
            return None if _dynamic(job) else _matrix_base(job, self.all_jobs)
        raise _Invalid(f"{name}: {kind} entries must be job names")


def _matrix_base(name: str, jobs: dict) -> str:
    """`build: [linux, amd64]` names one instance of a parallel:matrix job `build`."""
    if name not in jobs and ": [" in name:
        return name.split(": [", 1)[0]
    return name


def _flatten(v: list) -> list:
    out: list = []
    stack = [iter(v)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _deep_merge(base: Any, over: Any) -> Any:
    """GitLab's merge for extends and include: mappings merge key by key, anything else is replaced."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if k in out and isinstance(out[k], dict) and isinstance(v, dict) else v
    return out
