"""CI/CD pipeline curation: GitLab CI, GitHub Actions, Azure Pipelines, CircleCI and Tekton.

`curate_file(relpath, raw, ctx)` turns one file of a `cicd/` source into a `FileOutcome`: a
`ParsedDocument` with one `job` unit per job, or a rejection. Nothing is fetched or executed:
GitLab `include:` entries are only checked for form (a `local:` include that lies inside the
source is read through `ctx.read`, so the outcome depends on it), and the lint below is the
structural part of what `gitlab-ci lint`, SchemaStore's github-workflow schema and actionlint
check. Errors reject the file; softer findings go to `meta["warnings"]`.

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

import json
import posixpath
import re
from typing import Any

from ossa_assets.lib.curation import prose
from ossa_assets.lib.curation.common import (
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

MAX_UNIT_CHARS = 16_000  # an embedding pair stays useful well below this; longer jobs are cut
MAX_TITLE_CHARS = 200  # a title is the short query side of a pair
MAX_WARNINGS = 50
MAX_UNIT_NODES = 5_000  # YAML nodes dumped per unit; 16 KB of text holds far fewer
MAX_REFERENCE_NODES = 200_000  # nodes !reference expansion may build for one file
YAML_SUFFIXES = (".yml", ".yaml")


class _Invalid(Exception):
    """A lint error: becomes Rejected(invalid_gitlab_ci | invalid_github_actions | invalid_pipeline)."""


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

_GITLAB_GLOBALS = {
    "default", "include", "stages", "variables", "workflow", "image", "services", "cache",
    "before_script", "after_script", "types", "spec",
}
_GITLAB_JOB_MARKERS = {"script", "trigger", "extends", "stage", "before_script", "after_script"}


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


# -- shared helpers ---------------------------------------------------------------------------------


def _jsonable(o: Any) -> Any:
    """Meta must survive json.dumps: YAML 1.1 dates, non-string keys and the like become strings."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    return str(o)


def _bounded(o: Any, budget: int = MAX_UNIT_NODES) -> tuple[Any, bool]:
    """A copy of `o` with at most `budget` nodes: YAML aliases can make a small file expand to a
    structure that would take minutes to dump, and a unit only keeps 16 KB of it anyway."""
    left = [budget]
    cut = [False]

    def walk(x: Any) -> Any:
        left[0] -= 1
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                if left[0] <= 0:
                    cut[0] = True
                    break
                out[k] = walk(v)
            return out
        if isinstance(x, list):
            items = []
            for v in x:
                if left[0] <= 0:
                    cut[0] = True
                    break
                items.append(walk(v))
            return items
        return x

    return walk(o), cut[0]


def _unit(title: str, body: Any, meta: dict[str, Any]) -> Unit:
    body, cut = _bounded(body)
    text = dump_yaml(body)
    if cut or len(text) > MAX_UNIT_CHARS:
        text = text[:MAX_UNIT_CHARS] + "\n# ... truncated\n"
        meta["truncated"] = True
    if len(title) > MAX_TITLE_CHARS:
        title = title[: MAX_TITLE_CHARS - 1] + "…"
    return Unit("job", title, text, _jsonable(meta))


def _is(v: Any, allowed: Any) -> bool:
    """`v in allowed` for a string; anything else (a list, a mapping, null) is not a keyword."""
    return isinstance(v, str) and v in allowed


def _as_list(v: Any) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, list) else [v]


_GENERIC_STEMS = {"gitlab-ci", "config", "ci", "pipeline", "azure-pipelines", "push", "main", "workflow"}


def _context_name(relpath: str) -> str:
    """A human label for the pipeline when it names itself nowhere: the file's stem for named
    templates (`Android.gitlab-ci.yml` -> Android), else the project folder, with the variant of
    a `.gitlab-ci-<variant>.yml` file in brackets."""
    base = posixpath.basename(relpath)
    stem = re.sub(r"(\.gitlab-ci)?\.ya?ml$", "", base).lstrip(".")
    variant = stem[len("gitlab-ci-"):] if stem.startswith("gitlab-ci-") else ""
    if stem and not variant and stem not in _GENERIC_STEMS:
        return stem
    folder = posixpath.dirname(relpath)
    while posixpath.basename(folder) in (".circleci", ".azurepipelines", "workflows", ".github", ".gitlab"):
        folder = posixpath.dirname(folder)
    name = posixpath.basename(folder) or "pipeline"  # a file at the source root names nothing else
    return f"{name} ({variant})" if variant else name


def _title_text(v: Any) -> str | None:
    return v.strip() if isinstance(v, str) and v.strip() else None


def _starter_properties(relpath: str, ctx: SourceContext) -> dict[str, Any]:
    """actions/starter-workflows keeps each workflow's catalogue entry in properties/<stem>.properties.json."""
    d, base = posixpath.split(relpath)
    rel = posixpath.join(d, "properties", re.sub(r"\.ya?ml$", "", base) + ".properties.json")
    if not ctx.exists(rel):
        return {}
    try:
        props = safe_json_load(decode_text(ctx.read(rel), ctx.limits), ctx.limits)
    except Rejected:
        return {}
    if not isinstance(props, dict):
        return {}
    keep = {k: props[k] for k in ("name", "description", "categories") if k in props}
    return {"starter_properties": keep} if keep else {}


# == GitLab CI ======================================================================================

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
_VAR_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def _dynamic(v: Any) -> bool:
    """A value GitLab only knows at pipeline time (CI/CD variables, component inputs)."""
    return isinstance(v, str) and ("$" in v)


class _GitLab:
    def __init__(self, relpath: str, top: dict, ctx: SourceContext):
        self.relpath = relpath
        self.ctx = ctx
        self.own = top
        self.warnings: list[str] = []
        self.external = False  # an include we cannot see may define jobs, templates or stages
        self.included: list[str] = []
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
            return {k: self.deref(v, level, seen) for k, v in value.items()}
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


def _is_job_key(k: Any, v: Any) -> bool:
    """Top-level keys other than GitLab's keywords are jobs; `spec` was a plain job name before
    GitLab 15.11 made it a keyword, so an old `spec:` with a script stays a job."""
    if not isinstance(k, str):
        return False
    if k == "spec":
        return isinstance(v, dict) and bool(_GITLAB_JOB_MARKERS & set(v))
    return k not in _GITLAB_GLOBALS


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


def _gitlab(relpath: str, top: dict, header: dict | None, ctx: SourceContext) -> tuple[list[Unit], dict]:
    gl = _GitLab(relpath, top, ctx)
    gl.lint_globals()
    stages, stages_known = gl.stages()
    stage_index = {s: i for i, s in enumerate(stages)}
    visible, hidden = [], []
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
    context = context or _context_name(relpath)
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
        "includes": 1 if isinstance(top.get("include"), dict) else len(_as_list(top.get("include"))),
        "included_local": gl.included,
        "warnings": gl.warnings,
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


# == GitHub Actions =================================================================================

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
    unknown = set(map(str, wf)) - _GH_TOP
    if unknown:
        raise _Invalid(f"unknown top-level keys {sorted(unknown)}")
    if "on" not in wf:
        raise _Invalid("`on:` (the workflow's trigger) is missing")
    events = _gh_on(wf["on"])
    if "permissions" in wf:
        _gh_permissions(wf["permissions"], "workflow")
    _gh_env(wf.get("env"), "workflow env")
    _gh_defaults(wf.get("defaults"), "workflow")
    jobs = wf.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        raise _Invalid("jobs must be a non-empty mapping of job ids to jobs")
    warnings: list[str] = []
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
            "warnings": warnings}
    if "workflow_call" in events:
        meta["reusable"] = True
    return units, meta


def _gh_on(on: Any) -> list[str]:
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
            if keys - {"inputs"}:
                raise _Invalid(f"{where}: unknown keys {sorted(keys - {'inputs'})}")
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


# == Azure Pipelines, CircleCI, Tekton: light sanity checks ==========================================


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
