"""Validation with openapi-spec-validator 0.9.0, unable to fetch, plus the MUST rules of the
specification text that its bundled JSON Schemas miss."""

from __future__ import annotations

import os
import re
from typing import Any

from ossa_assets.lib.curation.common import Rejected
from ossa_assets.lib.curation.openapi.common import _d, _l, _operations, _pointer


def _check_ref_loops(doc: Any) -> None:
    """`$ref`s that only lead to other `$ref`s in a ring make the validator recurse until it dies."""
    refs: list[str] = []
    stack = [doc]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if isinstance(o.get("$ref"), str) and o["$ref"].startswith("#"):
                refs.append(o["$ref"])
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    ok: set[str] = set()
    for start in refs:
        chain: list[str] = []
        ref = start
        while ref not in ok:
            if ref in chain:
                raise Rejected("ref_cycle", f"{ref[:120]!r} only refers to itself through $refs")
            chain.append(ref)
            try:
                node = _pointer(doc, ref)
            except KeyError:
                break  # dangling: the validator reports it
            nxt = node.get("$ref") if isinstance(node, dict) else None
            if not (isinstance(nxt, str) and nxt.startswith("#")):
                break
            ref = nxt
        ok.update(chain)


class _FetchRefused(Exception):
    pass


class _RefuseFetch:
    def __call__(self, uri: str) -> Any:
        raise _FetchRefused(f"refusing to fetch {uri[:120]!r}")


class _NoHandlers(dict):
    """Every URI scheme maps to a refusal: jsonschema-path's retriever falls back to urlopen or
    requests for schemes it has no handler for, so an empty mapping would not be enough."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> Any:
        return _RefuseFetch()


class _IdList(list):
    """The validator's "schemas already checked" lists, with set-speed membership: it tests
    `id(schema) in list` once per schema it visits, quadratic on big specs (a 2.4 MB spec
    spent ~60% of its validation time there). Only append and `in` are used on them."""

    def __init__(self) -> None:
        super().__init__()
        self._ids: set = set()

    def append(self, item: Any) -> None:
        super().append(item)
        self._ids.add(item)

    def __contains__(self, item: object) -> bool:
        return item in self._ids


_VALIDATORS: dict[str, type] = {}


def _validator_class(kind: str) -> type:
    """openapi-spec-validator's class for `kind`, made unable to fetch, linear in the number of
    schemas, and tolerant of `x-` extension keys in `paths` (0.9.0 walks them as path items and
    raises KeyError/AttributeError on a scalar one)."""
    if kind in _VALIDATORS:
        return _VALIDATORS[kind]
    # openapi-spec-validator 0.9 switches to jsonschema-rs whenever that package is installed
    # ("auto"), and its messages differ ('"version" is ...' for "'version' is ..."): a test
    # tool (schemathesis brings jsonschema-rs) must not change what curation says. Read per call.
    os.environ["OPENAPI_SPEC_VALIDATOR_SCHEMA_VALIDATOR_BACKEND"] = "jsonschema"
    import openapi_spec_validator as osv

    base = {
        "2.0": osv.OpenAPIV2SpecValidator,
        "3.0": osv.OpenAPIV30SpecValidator,
        "3.1": osv.OpenAPIV31SpecValidator,
        "3.2": osv.OpenAPIV32SpecValidator,
    }[kind]
    schema_kw, paths_kw = base.keyword_validators["schema"], base.keyword_validators["paths"]

    class SchemaKeyword(schema_kw):  # type: ignore[misc, valid-type]
        def __init__(self, registry: Any) -> None:
            super().__init__(registry)
            self.visited_schema_ids = _IdList()
            self.meta_checked_schema_ids = _IdList()

    class PathsKeyword(paths_kw):  # type: ignore[misc, valid-type]
        def __call__(self, paths: Any) -> Any:
            for url, path_item in paths.items():
                if not str(url).startswith("x-"):
                    yield from self.path_validator(url, path_item)

    keywords = {**base.keyword_validators, "schema": SchemaKeyword, "paths": PathsKeyword}
    cls = type(
        base.__name__ + "Curation", (base,), {"resolver_handlers": _NoHandlers(), "keyword_validators": keywords}
    )
    _VALIDATORS[kind] = cls
    return cls


def _first_errors(it: Any, limit: int) -> list[Any]:
    """Up to `limit` errors; if the library itself fails while walking on after some were
    found, the ones found stand (the first error alone is enough to reject)."""
    found: list[Any] = []
    for _ in range(limit):
        try:
            e = next(it)
        except StopIteration:
            break
        except Exception:
            if found:
                break
            raise
        found.append(e)
    return found


def _error_key(err: Any) -> tuple:
    path = [str(p) for p in (getattr(err, "path", ()) or ())]
    return (len(path), path, str(getattr(err, "message", err)))


def _validate(doc: dict, kind: str) -> None:
    from referencing.exceptions import Unresolvable

    cls = _validator_class(kind)
    try:
        # The validator walks sets, so which error comes first varies between processes; report
        # the same one every time: the shallowest, then by path and message (bounded: invalid
        # specs rarely have many errors, and a huge invalid one need not be walked to the end).
        errors = _first_errors(cls(doc).iter_errors(), 200)
        err = min(errors, key=_error_key, default=None)
    except Unresolvable as e:
        cause: BaseException | None = e
        for _ in range(10):  # the refusal sits a few links down the exception chain
            if cause is None or isinstance(cause, _FetchRefused):
                break
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, _FetchRefused):
            raise Rejected("remote_ref", f"validator lookup: {cause}") from None
        raise Rejected("unresolvable_ref", f"{str(getattr(e, 'ref', ''))[:200]!r} does not resolve") from None
    except RecursionError:
        raise Rejected("too_deep", "validation exceeded the recursion limit") from None
    except Exception as e:  # noqa: BLE001 - the library's own failures on odd input
        raise Rejected("validator_error", f"{type(e).__name__}: {str(e)[:200]}") from None
    if err is not None:
        where = "/".join(str(p) for p in getattr(err, "path", ()) or ())
        msg = (getattr(err, "message", None) or str(err)).strip().splitlines()
        detail = (msg[0] if msg else type(err).__name__)[:240]
        raise Rejected("invalid_openapi", f"{detail} (at /{where})" if where else detail)


# -- spec rules the validator's bundled schemas miss ---------------------------------------------

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name (token)
_LINK_FIELDS = frozenset(("operationRef", "operationId", "parameters", "requestBody", "description", "server"))


def spec_rules(doc: dict, kind: str) -> None:
    """MUST rules of the specification text that openapi-spec-validator 0.9.0's schemas do not
    enforce (the OAI repository's own test fixtures exercise them): example/examples exclusive
    (3.x), server variable enums non-empty and holding the default (3.1+), Link Objects without
    unknown fields (3.1+), header names that are HTTP tokens."""
    for problem in _rule_problems(doc, kind):
        raise Rejected("invalid_openapi", f"spec rule: {problem}"[:300])


def _rule_problems(doc: dict, kind: str):
    v3, v31 = kind != "2.0", kind in ("3.1", "3.2")
    comps = _d(doc.get("components"))
    params = list(_d(doc.get("parameters")).values()) + list(_d(comps.get("parameters")).values())
    responses = list(_d(doc.get("responses")).values()) + list(_d(comps.get("responses")).values())
    bodies = list(_d(comps.get("requestBodies")).values())
    headers = list(_d(comps.get("headers")).values())
    links = list(_d(comps.get("links")).values())
    servers = list(_l(doc.get("servers")))
    for _section, _path, _m, op, item in _operations(doc):
        params += list(_l(item.get("parameters"))) + list(_l(op.get("parameters")))
        responses += list(_d(op.get("responses")).values())
        bodies.append(op.get("requestBody"))
        servers += list(_l(item.get("servers"))) + list(_l(op.get("servers")))
    media: list = []
    for p in params:
        if isinstance(p, dict) and "$ref" not in p:
            if p.get("in") == "header" and isinstance(p.get("name"), str) and not _TOKEN.match(p["name"]):
                yield f"header parameter name {p['name']!r} is not an HTTP token"
            media += list(_d(p.get("content")).values())
            if v3:
                yield from _exclusive(p, "parameter")
    for r in responses:
        if isinstance(r, dict):
            for name, h in _d(r.get("headers")).items():
                if not _TOKEN.match(str(name)):
                    yield f"response header name {name!r} is not an HTTP token"
                headers.append(h)
            media += list(_d(r.get("content")).values())
            links += list(_d(r.get("links")).values())
    for b in bodies:
        if isinstance(b, dict):
            media += list(_d(b.get("content")).values())
    if v3:
        for h in headers:
            if isinstance(h, dict) and "$ref" not in h:
                yield from _exclusive(h, "header")
                media += list(_d(h.get("content")).values())
        for mt in media:
            if isinstance(mt, dict):
                yield from _exclusive(mt, "media type")
    if v31:
        for s in servers:
            for name, var in _d(_d(s).get("variables")).items():
                enum = _d(var).get("enum")
                if isinstance(enum, list) and not enum:
                    yield f"server variable {name!r} has an empty enum"
                elif isinstance(enum, list) and var.get("default") not in enum:
                    yield f"server variable {name!r}: default {var.get('default')!r} is not in its enum"
        for link in links:
            if isinstance(link, dict) and "$ref" not in link:
                extra = sorted(str(k) for k in link if k not in _LINK_FIELDS and not str(k).startswith("x-"))
                if extra:
                    yield f"Link Object has unknown fields {extra}"


def _exclusive(obj: dict, what: str):
    if "example" in obj and isinstance(obj.get("examples"), dict):
        yield f"a {what} has both 'example' and 'examples' (mutually exclusive)"
