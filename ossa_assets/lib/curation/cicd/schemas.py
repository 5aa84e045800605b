"""The platforms' own published schemas: SchemaStore's `github-workflows` and `gitlab-ci`, as
check-jsonschema ships them (vendored, offline) and validates with them (draft-07, ECMAScript
`pattern`s through `regress`).

A schema is the structural authority; the curators' own rules add only what a schema cannot say
(needs that name no job, cycles, extends chains, stage order). A schema finding is not the
platform's verdict in a few known places, each waived with its reason and kept as a warning:

- a value the platform computes (`${{ … }}`, GitLab `$[[ inputs.… ]]`, a starter-workflow
  placeholder): the schema sees a string where the run sees a list, a number or a mapping;
- GitLab `!reference` tags into includes that are never fetched (template, component, project,
  remote): left as written, GitLab fills them in;
- YAML null (`container:`, `MY_TOKEN:`, a variable with no value): GitHub and GitLab read it as
  empty, the schema asks for a type;
- `format` checks: the schema's `regex` format is ECMAScript; GitLab's `coverage` is RE2;
- the gaps in `_GAPS`, each with the evidence that the platform accepts what the schema refuses;
- events GitHub documents that the vendored schema predates (`image_version`): taken out of the
  instance before validation, named in a warning.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import re
from dataclasses import dataclass
from typing import Any

# curator format -> check-jsonschema builtin schema (`--builtin-schema vendor.<name>`)
SCHEMA_FOR = {"github_actions": "github-workflows", "gitlab_ci": "gitlab-ci"}
MAX_REPORTED = 3  # errors named in a rejection's detail

_DYNAMIC = re.compile(r"\$\{\{.*\}\}|\$\[\[.*\]\]|^\$[a-z][a-z0-9-]*$", re.S)
_GH_FILTERS = ("branches", "branches-ignore", "tags", "tags-ignore", "paths", "paths-ignore")
_SCRIPTS = ("script", "before_script", "after_script")
_MAX_SCRIPT_NESTING = 10  # GitLab flattens script arrays nested up to 10 levels


@dataclass(frozen=True)
class _Gap:
    schema: str
    path: str  # fnmatch pattern over the "/"-joined instance path
    validator: str | None  # the JSON-schema keyword that failed (None: any)
    reason: str  # why the platform's verdict differs, with the evidence
    message: str = ""  # a text the schema's message must contain ("" = any)


_GAPS = (
    _Gap("github-workflows", "jobs/*/strategy", "required",
         "GitHub runs a strategy without a matrix (its starter workflows python-package-conda and rubocop do)",
         "'matrix'"),
    _Gap("github-workflows", "jobs/*/snapshot*", None,
         "GitHub's custom-image snapshot (`if`, version wildcards such as 2.*) is newer than the vendored schema "
         "(actionlint testdata/ok/custom_images.yaml)"),
    *(_Gap("github-workflows", f"on/*/{f}", "type",
           "GitHub takes a single string for an event filter (actionlint testdata/ok/filters_for_specific_events.yaml)")
      for f in _GH_FILTERS),
)


@dataclass
class SchemaVerdict:
    schema: str
    errors: list[str]  # the platform would refuse the file for these
    waived: list[str]  # schema findings the platform does not enforce, with the reason


@functools.lru_cache(maxsize=None)
def schema_id(name: str) -> str:
    """check-jsonschema's version and the schema file's sha256: recorded with each verdict and
    part of curation's cache key, so a schema update re-curates."""
    return f"check-jsonschema {importlib.metadata.version('check-jsonschema')} {name} sha256:{_digest(name)[:16]}"


@functools.lru_cache(maxsize=None)
def schemas_key() -> str:
    return hashlib.sha256("|".join(schema_id(n) for n in sorted(SCHEMA_FOR.values())).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _digest(name: str) -> str:
    return hashlib.sha256(_schema_file(name).read_bytes()).hexdigest()


def _schema_file(name: str):
    return importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / f"{name}.json"


@functools.lru_cache(maxsize=None)
def _validator(name: str):
    # Built exactly as `check-jsonschema --builtin-schema vendor.<name>` builds it (its loader,
    # default ECMAScript regex variant, formats on), so a verdict here is that tool's verdict.
    from check_jsonschema.formats import FormatOptions
    from check_jsonschema.regex_variants import RegexImplementation, RegexVariantName
    from check_jsonschema.schema_loader import BuiltinSchemaLoader

    regex = RegexImplementation(RegexVariantName.default)
    # check-jsonschema compiles each `pattern` anew for every value it checks (two thirds of the
    # validation time here); the same compilation, memoised, gives the same verdicts
    concrete = regex._concrete
    concrete._compile_pattern = functools.lru_cache(maxsize=None)(concrete._compile_pattern)
    return BuiltinSchemaLoader(f"vendor.{name}").get_validator("", {}, FormatOptions(regex_impl=regex), regex, False)


@functools.lru_cache(maxsize=None)
def _schema_events() -> frozenset[str]:
    schema = json.loads(_schema_file("github-workflows").read_text())
    return frozenset(schema["properties"]["on"]["oneOf"][2]["properties"])


def validate(fmt: str, instance: dict, platform_events: frozenset[str] = frozenset()) -> SchemaVerdict:
    """Validate a workflow (`github_actions`) or a merged GitLab configuration (`gitlab_ci`)."""
    name = SCHEMA_FOR[fmt]
    waived: list[str] = []
    instance = _jsonable(instance)
    if fmt == "github_actions":
        instance = _without_unknown_events(instance, platform_events, waived)
    errors: list[str] = []
    for err in sorted(_validator(name).iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        leaves = _branch_leaves(err)
        reasons = [_waiver(name, leaf) for leaf in leaves]
        if all(reasons):
            waived.append(f"{_describe(leaves[0])} (waived: {reasons[0]})")
        else:
            errors.append("; ".join([_describe(leaf) for leaf, why in zip(leaves, reasons) if not why][:2]))
    return SchemaVerdict(name, errors, waived)


def _jsonable(o: Any) -> Any:
    """The instance as the schema sees YAML: string keys, GitHub's bare `on` (YAML 1.1 True) as
    "on"; values keep their types (common._jsonable turns them into strings for metadata)."""
    if isinstance(o, dict):
        return {("on" if k is True else str(k)): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    return o


def _without_unknown_events(wf: dict, platform_events: frozenset[str], waived: list[str]) -> dict:
    on = wf.get("on")
    newer = platform_events - _schema_events()
    if isinstance(on, str):
        on_events = [on]
    elif isinstance(on, (list, dict)):
        on_events = list(on)
    else:
        return wf
    drop = [e for e in on_events if isinstance(e, str) and e in newer]
    if not drop:
        return wf
    wf = copy.copy(wf)
    if isinstance(on, dict):
        wf["on"] = {k: v for k, v in on.items() if k not in drop}
    else:
        wf["on"] = [e for e in on_events if e not in drop]
    if not wf["on"]:
        wf["on"] = "workflow_dispatch"  # a stand-in trigger: the rest of the file is still checked
    waived.append(f"on: events {drop} are GitHub's but newer than the schema (not checked by it)")
    return wf


def _branch_leaves(err) -> list:
    """The errors that explain `err`: for a oneOf/anyOf, those of the branch that matched the
    instance furthest (deepest failing path), not the first branch tried."""
    if not err.context:
        return [err]
    branches: dict[Any, list] = {}
    for sub in err.context:
        branches.setdefault(sub.relative_schema_path[0] if sub.relative_schema_path else 0, []).append(sub)

    def fit(subs: list) -> tuple[int, int, bool, int]:
        leaves = [leaf for s in subs for leaf in _branch_leaves(s)]
        depths = [len(x.absolute_path) for x in leaves]
        # the branch whose failures all lie deepest fits best (it matched everything above them);
        # then the deepest single failure; then a branch whose type matched the instance; then
        # the one that failed on fewer points
        return min(depths), max(depths), any(x.validator != "type" for x in leaves), -len(leaves)

    best = max(branches.values(), key=fit)
    return [leaf for s in best for leaf in _branch_leaves(s)]


def _waiver(schema: str, leaf) -> str | None:
    inst = leaf.instance
    path = "/".join(map(str, leaf.absolute_path))
    if isinstance(inst, str) and _DYNAMIC.search(inst):
        return "a value computed at run time; the schema cannot evaluate it"
    if inst is None:
        return "YAML null reads as empty on the platform"
    if schema == "gitlab-ci" and ("!reference" in path.split("/") or "'!reference'" in leaf.message
                                  or (isinstance(inst, dict) and "!reference" in inst)):
        return "an !reference into an include that is not fetched: GitLab fills it in"
    if leaf.validator == "format":
        return "the schema's formats are ECMAScript's; the platforms use their own regex engines"
    if schema == "gitlab-ci" and (nesting := _script_nesting(leaf)) is not None and nesting <= _MAX_SCRIPT_NESTING:
        return f"GitLab flattens script lists nested up to {_MAX_SCRIPT_NESTING} levels"
    for gap in _GAPS:
        if gap.schema == schema and gap.validator in (None, leaf.validator) and gap.message in leaf.message \
                and fnmatch.fnmatchcase(path, gap.path):
            return gap.reason
    return None


def _script_nesting(leaf) -> int | None:
    """How deep the failing part of a job's script list is nested (the script list itself is
    level 1), or None when the failure is no script nesting (not a list of strings, not a script)."""
    path = [str(p) for p in leaf.absolute_path]
    at = next((i for i, p in enumerate(path) if p in _SCRIPTS and i > 0), None)
    if at is None or not all(p.isdigit() for p in path[at + 1:]):
        return None
    inner = _list_depth(leaf.instance)
    return None if inner is None else len(path) - at - 1 + inner


def _list_depth(v: Any) -> int | None:
    """Nesting of a list of strings (a string is 0), None if anything else is in it."""
    if isinstance(v, str):
        return 0
    if not isinstance(v, list):
        return None
    depths = [_list_depth(x) for x in v]
    return None if None in depths else 1 + max(depths, default=0)


def _describe(leaf) -> str:
    path = ".".join(map(str, leaf.absolute_path)) or "(top level)"
    msg = leaf.message
    if leaf.validator == "oneOf" and not leaf.context:
        msg = "matches more than one of the forms the schema allows (exactly one must match)"
    return f"{path}: {msg[:157] + '...' if len(msg) > 160 else msg}"
