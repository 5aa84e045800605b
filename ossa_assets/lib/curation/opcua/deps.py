"""RequiredModels of a NodeSet resolved against the source-wide index "nodeset_models".

The pipeline records an index builder as "module:qualname" and imports it again by that string,
so `_build_index` stays a module-level function.
"""

from __future__ import annotations

import re
from typing import Any

from ossa_assets.lib.curation.common import Rejected, SourceContext, safe_xml_parse
from ossa_assets.lib.curation.opcua.nodes import BASE_MODEL, NS, _models, _prolog

INDEX = "nodeset_models"
_MODELS_END = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?Models\s*>")


def _dependencies(relpath: str, models: list[dict[str, Any]], ctx: SourceContext) -> dict[str, Any]:
    """RequiredModels resolved against the other NodeSets of the source.

    Everything used here comes from the index (ModelUri, Version and RequiredModels of every
    file), so the index digest is the whole dependency: no ctx.read of the resolved files, which
    would re-curate this file when a dependency's nodes change and its model does not.
    """
    index = ctx.index(INDEX, _build_index)
    own = {m["model_uri"] for m in models}
    required: list[dict[str, Any]] = []
    for m in models:
        required += [r for r in m["required"] if r["model_uri"] not in {q["model_uri"] for q in required}]
    resolved: dict[str, str] = {}
    missing, builtin, warnings = [], [], []
    for r in required:
        uri = r["model_uri"]
        if uri in own:
            continue
        provider = _pick(index["providers"].get(uri, []), r.get("version"), relpath)
        if provider is None:
            (builtin if uri == BASE_MODEL else missing).append(uri)
            continue
        resolved[uri] = provider[0]
        if r.get("version") and provider[1] and _ver(provider[1]) < _ver(r["version"]):
            warnings.append(f"{uri} required at {r['version']}, {provider[0]} has {provider[1]}")
    # transitive closure over the index: a dependency whose own dependencies are missing leaves
    # this model unloadable as well
    seen, queue, missing_transitive = {relpath}, list(resolved.values()), []
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        for uri in index["requires"].get(path, []):
            provider = _pick(index["providers"].get(uri, []), None, path)
            if provider:
                queue.append(provider[0])
            elif uri != BASE_MODEL and uri not in missing + missing_transitive:
                missing_transitive.append(uri)
    first = models[0] if models else {}
    if not models:
        warnings.append("no Models element: dependencies unknown")
    return {
        "model_uri": first.get("model_uri"), "version": first.get("version"),
        "publication_date": first.get("publication_date"),
        "models": [{k: m[k] for k in ("model_uri", "version", "publication_date")} for m in models],
        "required_models": required, "resolved": resolved, "missing": missing,
        "missing_transitive": missing_transitive, "builtin": builtin,
        "closed": not missing and not missing_transitive,
        "dependency_note": f"{BASE_MODEL} is built into every OPC UA server: counted as present "
                           "when no file of the source provides it (listed under builtin)",
        "warnings": warnings,
    }


def _pick(providers: list[list[str]], version: str | None, relpath: str) -> list[str] | None:
    """The provider of a model: same version first, then the one nearest in the tree, then path."""
    others = [p for p in providers if p[0] != relpath]
    if not others:
        return None

    def near(p: list[str]) -> int:
        a, b = p[0].split("/"), relpath.split("/")
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    return min(others, key=lambda p: (bool(version) and p[1] != version, -near(p), p[0]))


def _ver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:4])


def _build_index(ctx: SourceContext) -> dict[str, Any]:
    """{"providers": {ModelUri: [[relpath, version, date], ...]}, "requires": {relpath: [uri]}}
    from the <Models> head of each .xml file: parsed up to </Models> with the root closed after
    it, so a 13 MB NodeSet costs a regex search, not a tree. ctx.index keeps these reads out of
    the file's dependencies: the index digest stands for them."""
    providers: dict[str, list[list[str]]] = {}
    requires: dict[str, list[str]] = {}
    for rel in ctx.files():
        if not rel.lower().endswith(".xml"):
            continue
        try:
            models = _head_models(ctx.read(rel), ctx)
        except (Rejected, OSError):
            continue  # not a NodeSet, hostile, or unreadable: it provides nothing
        for m in models:
            providers.setdefault(m["model_uri"], []).append([rel, m["version"] or "", m["publication_date"] or ""])
        own = {m["model_uri"] for m in models}
        requires[rel] = sorted({r["model_uri"] for m in models for r in m["required"]} - own)
    return {"providers": {k: sorted(v) for k, v in sorted(providers.items())}, "requires": requires}


def _head_models(raw: bytes, ctx: SourceContext) -> list[dict[str, Any]]:
    if len(raw) > ctx.limits.max_bytes:
        return []
    end = _MODELS_END.search(raw)
    doctype, root_name = _prolog(raw)
    if end is None or doctype is not None or root_name is None or root_name.split(":")[-1] != "UANodeSet":
        return []
    try:
        root = safe_xml_parse(raw[: end.end()] + b"</" + root_name.encode() + b">", ctx.limits)
    except Rejected:
        root = safe_xml_parse(raw, ctx.limits)  # "</Models>" inside a comment: parse it all
    return _models(root) if root.tag == f"{{{NS}}}UANodeSet" else []
