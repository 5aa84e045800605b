"""`operation` units (one per path + method) and `schema` units (one per component schema)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from ossa_assets.lib.curation.common import Unit, dump_yaml
from ossa_assets.lib.curation.openapi.common import _d, _deref, _l, _operations, _pointer

MAX_UNIT_CHARS = 16_000  # longer unit texts are cut at a line end, flagged in meta["truncated"]
MAX_TITLE_CHARS = 200


def _first_line(s: Any) -> str:
    if not isinstance(s, str):
        return ""
    for line in s.strip().splitlines():
        if line.strip():
            return line.strip()[:MAX_TITLE_CHARS]
    return ""


def _cap(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_UNIT_CHARS:
        return text, False
    cut = text.rfind("\n", 0, MAX_UNIT_CHARS)
    return text[: cut if cut > 0 else MAX_UNIT_CHARS] + "\n# ... truncated\n", True


def _refs(node: Any) -> list[str]:
    """Every `$ref` string under node, in document order."""
    out: list[str] = []
    stack = [node]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if isinstance(o.get("$ref"), str):
                out.append(o["$ref"])
            stack.extend(reversed(list(o.values())))
        elif isinstance(o, list):
            stack.extend(reversed(o))
    return out


def _schema_prefix(kind: str) -> str:
    return "#/definitions/" if kind == "2.0" else "#/components/schemas/"


def _schema_names(doc: dict, node: Any, kind: str) -> list[str]:
    """Component schemas `node` refers to directly (through its parameters, request bodies and
    responses, internal refs to them followed) or one level down (what those schemas refer to)."""
    prefix = _schema_prefix(kind)
    follow = ("#/components/", "#/parameters/", "#/responses/")
    direct: list[str] = []
    followed: set[str] = set()
    todo = [node]
    while todo:
        for r in _refs(todo.pop(0)):
            if r.startswith(prefix):
                name = _ref_name(r, prefix)
                if name not in direct:
                    direct.append(name)
            elif r.startswith(follow) and r not in followed:
                followed.add(r)
                try:
                    todo.append(_pointer(doc, r))
                except KeyError:
                    pass
    schemas = _schema_section(doc, kind)
    names = list(direct)
    for name in direct:
        for r in _refs(schemas.get(name)):
            if r.startswith(prefix) and _ref_name(r, prefix) not in names:
                names.append(_ref_name(r, prefix))
    return names[:100]


def _ref_name(ref: str, prefix: str) -> str:
    return unquote(ref[len(prefix) :].split("/", 1)[0]).replace("~1", "/").replace("~0", "~")


def _schema_section(doc: dict, kind: str) -> dict:
    return _d(doc.get("definitions")) if kind == "2.0" else _d(_d(doc.get("components")).get("schemas"))


def _param_key(doc: dict, p: Any) -> tuple[str, str] | None:
    p = _deref(doc, p)
    return (str(p.get("name")), str(p.get("in"))) if isinstance(p, dict) and "name" in p else None


def _with_api(name: str, api: str) -> str:
    """"List pets — Swagger Petstore": an operation's title names its API, since a unit read
    alone (a search hit, a training sample) is otherwise "List pets" of any of a family's specs.
    Not repeated when the name already says it."""
    if not api or api.casefold() in name.casefold():
        return name
    return f"{name} — {api}"


def operation_units(doc: dict, kind: str) -> list[Unit]:
    units = []
    api = _first_line(_d(doc.get("info")).get("title"))
    for section, path, method, op, item in _operations(doc):
        own = _l(op.get("parameters"))
        own_keys = {_param_key(doc, p) for p in own}
        params = [p for p in _l(item.get("parameters")) if _param_key(doc, p) not in own_keys] + list(own)
        body = dict(op)
        if params:
            body["parameters"] = params  # path-level parameters apply to every operation below
        text, truncated = _cap(dump_yaml({path: {method: body}}))
        summary = _first_line(op.get("summary"))
        op_id = op.get("operationId") if isinstance(op.get("operationId"), str) else None
        name = summary or (op_id or "").strip()[:MAX_TITLE_CHARS] or f"{method.upper()} {path}"
        names = [_d(_deref(doc, p)).get("name") for p in params]
        units.append(
            Unit(
                "operation",
                _with_api(name, api),
                text,
                {
                    "name": name,  # the title without the API's name
                    "api": api or None,
                    "path": path,
                    "method": method,
                    "webhook": section == "webhooks",
                    "operation_id": op_id,
                    "summary": summary or None,
                    "parameters": [str(n) for n in names if n is not None],
                    "schemas": _schema_names(doc, body, kind),
                    "tags": [str(t) for t in _l(op.get("tags"))],
                    "truncated": truncated,
                },
            )
        )
    return units


def schema_units(doc: dict, kind: str) -> list[Unit]:
    units = []
    prefix = _schema_prefix(kind)
    for name, schema in _schema_section(doc, kind).items():
        if not isinstance(schema, dict) or not str(name).strip():
            continue
        what = _first_line(schema.get("description")) or _first_line(schema.get("title"))
        text, truncated = _cap(dump_yaml({name: schema}))
        refs = []
        for r in _refs(schema):
            if r.startswith(prefix) and _ref_name(r, prefix) not in refs:
                refs.append(_ref_name(r, prefix))
        kind_of = schema.get("type")
        units.append(
            Unit(
                "schema",
                f"{name}: {what}"[:MAX_TITLE_CHARS] if what else str(name)[:MAX_TITLE_CHARS],
                text,
                {
                    "name": str(name),
                    "type": kind_of if isinstance(kind_of, str) else None,
                    "refs": refs[:100],
                    "truncated": truncated,
                },
            )
        )
    return units
