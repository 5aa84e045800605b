"""What bundling, validation and units share: parsing, the JSON data model, internal pointers
and the walk over a spec's operations."""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import unquote

from ossa_assets.lib.curation.common import SourceContext, safe_json_load, safe_yaml_load

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace", "query")  # query: 3.2


def _parse(relpath: str, text: str, ctx: SourceContext) -> Any:
    if relpath.lower().endswith(".json"):
        return safe_json_load(text, ctx.limits)
    return safe_yaml_load(text, ctx.limits)


def _copy(o: Any) -> Any:
    """Un-shared, in the JSON data model OpenAPI is defined on: YAML's unquoted `200:` keys and
    timestamps become the strings a YAML-to-JSON conversion gives (the validator chokes on both)."""
    if isinstance(o, dict):
        return {_json_key(k): _copy(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_copy(v) for v in o]
    if isinstance(o, (datetime.date, datetime.datetime)):
        return o.isoformat()
    return o


def _json_key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bool) or k is None:
        return {True: "true", False: "false", None: "null"}[k]
    return k.isoformat() if isinstance(k, (datetime.date, datetime.datetime)) else str(k)


def _pointer(doc: Any, ref: str) -> Any:
    """The node an internal ref names, or KeyError."""
    node = doc
    frag = ref[1:]
    for raw in frag.split("/")[1:] if frag else []:
        for seg in (raw.replace("~1", "/").replace("~0", "~"), unquote(raw).replace("~1", "/").replace("~0", "~")):
            if isinstance(node, dict) and seg in node:
                node = node[seg]
                break
            if isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
                node = node[int(seg)]
                break
        else:
            raise KeyError(ref)
    return node


def _d(o: Any) -> dict:
    return o if isinstance(o, dict) else {}


def _l(o: Any) -> list:
    return o if isinstance(o, list) else []


def _deref(doc: dict, node: Any) -> Any:
    """An internal `$ref` chain followed (a few hops; what does not resolve stays as it is)."""
    for _ in range(8):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#")):
            break
        try:
            node = _pointer(doc, node["$ref"])
        except KeyError:
            break
    return node


def _operations(doc: dict):
    """(section, path, method, operation, path item) for paths and webhooks, in document order."""
    for section in ("paths", "webhooks"):
        for path, item in _d(doc.get(section)).items():
            item = _deref(doc, item)
            if not isinstance(item, dict):
                continue
            for m in METHODS:
                if isinstance(item.get(m), dict):
                    yield section, str(path), m, item[m], item
            for m, op in _d(item.get("additionalOperations")).items():
                op = _deref(doc, op)
                if isinstance(op, dict):
                    yield section, str(path), str(m), op, item
