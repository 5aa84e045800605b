"""What the CI/CD formats share: limits, the lint error, classification keywords, job units,
titles and the starter-workflow catalogue entry."""

from __future__ import annotations

import posixpath
import re
from typing import Any

from ossa_assets.lib.curation.common import (
    Rejected,
    SourceContext,
    Unit,
    decode_text,
    dump_yaml,
    safe_json_load,
)

MAX_UNIT_CHARS = 16_000  # an embedding pair stays useful well below this; longer jobs are cut
MAX_TITLE_CHARS = 200  # a title is the short query side of a pair
MAX_WARNINGS = 50
MAX_UNIT_NODES = 5_000  # YAML nodes dumped per unit; 16 KB of text holds far fewer
MAX_REFERENCE_NODES = 200_000  # nodes !reference expansion may build for one file
YAML_SUFFIXES = (".yml", ".yaml")


class _Invalid(Exception):
    """A lint error: becomes Rejected(invalid_gitlab_ci | invalid_github_actions | invalid_pipeline)."""


# GitLab's top-level keywords and job markers: classification and the GitLab lint both use them
_GITLAB_GLOBALS = {
    "default", "include", "stages", "variables", "workflow", "image", "services", "cache",
    "before_script", "after_script", "types", "spec",
}
_GITLAB_JOB_MARKERS = {"script", "trigger", "extends", "stage", "before_script", "after_script"}


def _is_job_key(k: Any, v: Any) -> bool:
    """Top-level keys other than GitLab's keywords are jobs; `spec` was a plain job name before
    GitLab 15.11 made it a keyword, so an old `spec:` with a script stays a job."""
    if not isinstance(k, str):
        return False
    if k == "spec":
        return isinstance(v, dict) and bool(_GITLAB_JOB_MARKERS & set(v))
    return k not in _GITLAB_GLOBALS


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


def _context_name(relpath: str, source: str = "") -> str:
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
    # a file at the source root belongs to the project the source is (its name), else "pipeline"
    name = posixpath.basename(folder) or source or "pipeline"
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


def _dynamic(v: Any) -> bool:
    """A value GitLab only knows at pipeline time (CI/CD variables, component inputs)."""
    return isinstance(v, str) and ("$" in v)
