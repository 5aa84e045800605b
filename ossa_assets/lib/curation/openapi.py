"""OpenAPI curation: one file of an api_spec source -> a validated, bundled spec and its units.

A YAML/JSON mapping with a top-level `openapi` (3.x) or `swagger` (2.0) key is a root spec.
Its relative external `$ref`s are bundled (read through `ctx.read`, never outside the source
root, never from the network); the bundle is validated with openapi-spec-validator 0.9.0 plus
a few MUST rules of the specification text that its bundled JSON Schemas miss, then cut into
`operation` units (one per path + method) and `schema` units (one per component schema).
Markdown/reStructuredText/text files are curated as prose. Fragments (files a root spec
references) come back as `not_openapi`; the caller re-labels them from what roots read.

Bundling. Refs in schema positions (`schema`, `items`, `properties/*`, `allOf/*`, ...) are
hoisted into `components/schemas` (3.x) or `definitions` (2.0) under a name derived from the
target (its last pointer segment, else the file stem; `_2`, `_3`... on a clash) and rewritten to
internal refs: each target is bundled once, so shared schemas are not duplicated and schema
cycles across files end at an internal ref. A root `components/schemas/X: {$ref: file}` makes
`X` the home of that file's schema. Other refs (responses, parameters, path items, operations,
descriptions...) are inlined; a cycle through those is `ref_cycle`. Refs back into the root file
become internal refs; internal refs of the root stay as they are. Values of `example`,
`default`, `enum`, `const` and Example `value`s are data: a `$ref` key there is not resolved.
A source may be a subset of a repository (the shared corpus has the files of 32 of
digitalocean's 659 operations): an operation (or a `description`) whose `$ref` names a file that is absent
from the source is dropped and counted in `meta["pruned"]`, rather than losing the whole spec;
a missing file anywhere else, or a pointer missing inside a present file, rejects the spec.

Reason codes (besides common.py's empty, too_large, binary, not_utf8, malformed_yaml,
malformed_json, yaml_unsafe_tag, yaml_alias_bomb, too_deep; a fragment's parse failure keeps
its reason, with the fragment named in the detail):
- unsupported_format: not .yaml/.yml/.json nor a prose suffix
- not_openapi: no top-level `openapi`/`swagger` key (fragments, JSON Schemas, other YAML)
- unsupported_openapi_version: not swagger 2.0 nor openapi 3.0/3.1/3.2
- remote_ref: a `$ref` (or a validator lookup) that would need the network
- ref_outside_root: a `$ref` that leaves the source root
- unresolvable_ref: a `$ref` whose file or JSON pointer does not exist (or every operation of
  the spec was pruned for missing files)
- ref_cycle: a cycle through non-schema objects, or `$ref`s that only point at each other
- bundle_too_large: the bundle passes MAX_BUNDLE_BYTES of JSON or limits.max_yaml_nodes nodes
- invalid_openapi: the first schema/semantic error of openapi-spec-validator, or of spec_rules()
- validator_error: openapi-spec-validator itself raised on this input (type and message)
- curator_error: an unexpected exception here (its type name)
"""

from __future__ import annotations

import datetime
import posixpath
import re
from typing import Any
from urllib.parse import unquote

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
    safe_yaml_load,
)

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
MAX_BUNDLE_BYTES = 20_000_000  # JSON size of a bundle: above the biggest public specs, and ~1.5 min to validate
PRUNE_MISSING_FILES = True  # see the module docstring: subset sources keep their resolvable part

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace", "query")  # query: 3.2
MAX_UNIT_CHARS = 16_000  # longer unit texts are cut at a line end, flagged in meta["truncated"]
MAX_TITLE_CHARS = 200
_SCHEMA, _SCHEMA_MAP, _OTHER, _DATA = "schema", "schema_map", "other", "data"
_SUBSCHEMA = frozenset(
    "items additionalProperties not contains if then else propertyNames unevaluatedItems "
    "unevaluatedProperties additionalItems contentSchema allOf anyOf oneOf prefixItems".split()
)
_SCHEMA_MAPS = frozenset(("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"))
_DATA_KEYS = frozenset(("example", "default", "enum", "const"))
# maps whose values are named OpenAPI objects, whatever their names
_NAMED_MAPS = frozenset(
    "responses examples headers parameters content callbacks links requestBodies securitySchemes "
    "pathItems paths webhooks variables encoding mediaTypes".split()
)
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_PENDING = object()


def curate_file(relpath: str, raw: bytes, ctx: SourceContext) -> FileOutcome:
    """Never raises: every problem is a rejection with a reason code (see the module docstring)."""
    try:
        return FileOutcome(relpath, "document", document=_curate(relpath, raw, ctx))
    except Rejected as r:
        return FileOutcome.rejected(relpath, r)
    except RecursionError:
        return FileOutcome.rejected(relpath, Rejected("too_deep", "recursion limit reached"))
    except Exception as e:  # noqa: BLE001 - the contract is "never raise"
        return FileOutcome.rejected(relpath, Rejected("curator_error", type(e).__name__))


def _curate(relpath: str, raw: bytes, ctx: SourceContext) -> ParsedDocument:
    suffix = posixpath.splitext(relpath)[1].lower()
    if suffix in prose.PROSE_SUFFIXES:
        return prose.curate_prose(relpath, decode_text(raw, ctx.limits), ctx.limits.max_units)
    if suffix not in SPEC_SUFFIXES:
        raise Rejected("unsupported_format", f"suffix {suffix or '(none)'!r}")
    text = decode_text(raw, ctx.limits)
    doc = _parse(relpath, text, ctx)
    if not isinstance(doc, dict) or not ("openapi" in doc or "swagger" in doc):
        raise Rejected("not_openapi", "no top-level 'openapi' or 'swagger' key")
    version, kind = _version(doc)

    bundler = _Bundler(relpath, doc, ctx, kind)
    bundled = bundler.bundle()
    _check_ref_loops(bundled)
    _validate(bundled, kind)
    spec_rules(bundled, kind)

    ops = operation_units(bundled, kind)
    schemas = schema_units(bundled, kind)
    units = (ops + schemas)[: ctx.limits.max_units]
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    meta: dict[str, Any] = {
        "openapi_version": version,
        "title": info.get("title") if isinstance(info.get("title"), str) else None,
        "operations": len(ops),
        "schemas": len(schemas),
        "units_truncated": len(ops) + len(schemas) > len(units),
        "bundled_files": sorted(bundler.files),
        "hoisted_schemas": len(bundler.hoisted) - len(bundler.claims),
        "warnings": [],
    }
    if bundler.pruned_ops or bundler.pruned_descriptions:
        meta["pruned"] = {
            "operations": bundler.pruned_ops,
            "descriptions": bundler.pruned_descriptions,
            "missing_files": len(bundler.missing),
            "examples": sorted(bundler.missing)[:20],
        }
        meta["warnings"].append(
            f"{bundler.pruned_ops} operations and {bundler.pruned_descriptions} descriptions dropped: "
            f"{len(bundler.missing)} referenced files are not in the source"
        )
    return ParsedDocument(
        format="openapi",
        text=dump_yaml(bundled) if bundler.external else text,
        units=units,
        license=_license(info),
        meta=meta,
    )


def _parse(relpath: str, text: str, ctx: SourceContext) -> Any:
    if relpath.lower().endswith(".json"):
        return safe_json_load(text, ctx.limits)
    return safe_yaml_load(text, ctx.limits)


def _version(doc: dict) -> tuple[str, str]:
    """(the version as stated, validator kind "2.0" | "3.0" | "3.1" | "3.2")."""
    raw = doc.get("openapi", doc.get("swagger"))
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise Rejected("unsupported_openapi_version", f"version is a {type(raw).__name__}")
    version = str(raw)
    if "openapi" not in doc:
        if version == "2.0":
            return version, "2.0"
    else:
        # YAML reads `openapi: 3.0` as a float: pick the validator anyway, it reports the type
        m = re.match(r"3\.([012])(?:$|[.\-])", version)
        if m:
            return version, f"3.{m.group(1)}"
    raise Rejected("unsupported_openapi_version", version[:50])


def _license(info: dict) -> str | None:
    lic = info.get("license")
    if not isinstance(lic, dict):
        return None
    for key in ("identifier", "name"):
        if isinstance(lic.get(key), str) and lic[key].strip():
            return lic[key].strip()
    return None


# -- bundling ------------------------------------------------------------------------------------


class _MissingFile(Rejected):
    """A `$ref` to a file the source does not have: prunable inside an operation."""

    def __init__(self, detail: str, missing: str):
        super().__init__("unresolvable_ref", detail)
        self.missing = missing


class _Bundler:
    def __init__(self, root: str, doc: dict, ctx: SourceContext, kind: str):
        self.root, self.doc, self.ctx, self.kind = root, doc, ctx, kind
        self.parsed: dict[str, Any] = {}
        self.files: set[str] = set()  # fragments read (the root excluded)
        self.external = 0  # external refs met (read or pruned): the text is then the bundle
        self.budget = ctx.limits.max_yaml_nodes  # nodes walked, across all files
        self.homes: dict[tuple, str] = {}  # schema target -> its name under components/schemas
        self.hoisted: dict[str, Any] = {}  # name -> bundled schema (or _PENDING while in progress)
        self.claims: dict[str, tuple] = {}  # root components/schemas/X: {$ref: file} -> target
        self.inlined: dict[tuple, Any] = {}
        self.active: set[tuple] = set()
        self.failed: dict[tuple, Rejected] = {}
        self.missing: set[str] = set()
        self.pruned_ops = 0
        self.pruned_descriptions = 0
        existing = self._schema_section(doc)
        self.taken: set[str] = {str(k) for k in existing}

    # the root's schema section: `definitions` (2.0) or `components/schemas` (3.x)
    def _schema_section(self, doc: dict) -> dict:
        if self.kind == "2.0":
            sec = doc.get("definitions")
        else:
            comp = doc.get("components")
            sec = comp.get("schemas") if isinstance(comp, dict) else None
        return sec if isinstance(sec, dict) else {}

    def bundle(self) -> dict:
        for name, v in self._schema_section(self.doc).items():
            if isinstance(v, dict) and list(v) == ["$ref"] and isinstance(v["$ref"], str):
                try:
                    target = self._target(v["$ref"], self.root)
                except Rejected:
                    continue  # raised again, with its reason, when the section is walked
                if target[0] != self.root and target not in self.homes:
                    self.homes[target] = str(name)
                    self.claims[str(name)] = target
        out: dict = {}
        had_ops = False
        for k, v in self.doc.items():
            if k in ("paths", "webhooks") and isinstance(v, dict):
                had_ops = had_ops or any(_count_ops(i) for i in v.values())
                out[k] = self._walk_paths(v)
            elif k == "definitions" and self.kind == "2.0" and isinstance(v, dict):
                out[k] = self._walk_schema_section(v)
            elif k == "components" and self.kind != "2.0" and isinstance(v, dict):
                out[k] = {
                    ck: self._walk_schema_section(cv)
                    if ck == "schemas" and isinstance(cv, dict)
                    else self._walk(cv, self.root, _child_mode(_OTHER, ck, self.kind, k), ck)
                    for ck, cv in v.items()
                }
            else:
                out[k] = self._walk(v, self.root, _child_mode(_OTHER, k, self.kind), k)
        if (
            had_ops
            and self.pruned_ops
            and not any(_count_ops(i) for k in ("paths", "webhooks") for i in (out.get(k) or {}).values())
        ):
            raise Rejected("unresolvable_ref", f"every operation refers to missing files, e.g. {min(self.missing)}")
        self._place_hoisted(out)
        return _materialize(out, self.ctx.limits)

    def _walk_schema_section(self, section: dict) -> dict:
        out = {}
        for name, v in section.items():
            target = self.claims.get(str(name))
            if target is not None:
                self._hoist(target, v["$ref"], self.root)
                out[name] = None  # filled by _place_hoisted, which has every hoisted schema
            else:
                out[name] = self._walk(v, self.root, _SCHEMA)
        return out

    def _place_hoisted(self, out: dict) -> None:
        if not self.hoisted:
            return
        if self.kind == "2.0":
            section = out.setdefault("definitions", {})
        else:
            comp = out.setdefault("components", {})
            section = comp.setdefault("schemas", {}) if isinstance(comp, dict) else None
        if not isinstance(section, dict):
            raise Rejected("invalid_openapi", "the schema section to bundle external schemas into is not a mapping")
        for name, value in self.hoisted.items():
            section[name] = value

    def _walk_paths(self, paths: dict) -> dict:
        out = {}
        for path, item in paths.items():
            try:
                if isinstance(item, dict) and isinstance(item.get("$ref"), str) and not item["$ref"].startswith("#"):
                    out[path] = self._walk(item, self.root, _OTHER)  # an external path item: all or nothing
                    continue
                kept = self._path_item(item) if isinstance(item, dict) else self._walk(item, self.root, _OTHER)
            except _MissingFile as m:
                self._prune(m, _count_ops(item))
                continue
            if kept is not None:
                out[path] = kept
        return out

    def _path_item(self, item: dict) -> dict | None:
        """A root path item, less the operations whose refs name missing files (None: all were)."""
        out: dict = {}
        had = dropped = 0
        for k, v in item.items():
            if k == "additionalOperations" and isinstance(v, dict):
                ops = list(v.items())
            elif k in METHODS and isinstance(v, dict):
                ops = [(k, v)]
            else:
                out[k] = self._walk(v, self.root, _child_mode(_OTHER, k, self.kind), k)
                continue
            kept = {}
            for m, op in ops:
                had += 1
                try:
                    kept[m] = self._walk(op, self.root, _OTHER, m)
                except _MissingFile as e:
                    self._prune(e, 1)
                    dropped += 1
            if k == "additionalOperations":
                out[k] = kept
            elif k in kept:
                out[k] = kept[k]
        return None if had and had == dropped else out

    def _prune(self, m: _MissingFile, ops: int) -> None:
        if not PRUNE_MISSING_FILES:
            raise m
        self.pruned_ops += ops
        self.missing.add(m.missing)

    def _tick(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise Rejected("bundle_too_large", f"more than {self.ctx.limits.max_yaml_nodes} nodes walked")

    def _walk(self, node: Any, base: str, mode: str, key: Any = None) -> Any:
        self._tick()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if mode != _DATA and isinstance(ref, str) and (base != self.root or not ref.startswith("#")):
                return self._ref(node, ref, base, mode, key)
            out = {}
            for k, v in node.items():
                cm = _child_mode(mode, k, self.kind, key)
                if k == "description" and mode == _OTHER and isinstance(v, dict) and PRUNE_MISSING_FILES:
                    try:
                        out[k] = self._walk(v, base, cm, k)
                    except _MissingFile as m:
                        self.pruned_descriptions += 1  # a non-standard `description: {$ref: file}`
                        self.missing.add(m.missing)
                    continue
                out[k] = self._walk(v, base, cm, k)
            return out
        if isinstance(node, list):
            return [self._walk(v, base, mode) for v in node]
        return node

    def _target(self, ref: str, base: str) -> tuple[str, tuple[str, ...]]:
        file_part, _, frag = ref.partition("#")
        if file_part:
            if "://" not in file_part and _URI_SCHEME.match(file_part) and not re.match(r"^[A-Za-z]:[\\/]", file_part):
                raise Rejected("unresolvable_ref", f"{ref[:120]!r} from {base}: not a relative reference")
            rel = self.ctx.resolve(base, unquote(file_part))
        else:
            rel = base
        frag = unquote(frag)
        if frag and not frag.startswith("/"):
            raise Rejected("unresolvable_ref", f"{ref[:120]!r} from {base}: only JSON-pointer fragments are supported")
        segs = tuple(s.replace("~1", "/").replace("~0", "~") for s in frag.split("/")[1:]) if frag else ()
        return rel, segs

    def _load(self, rel: str, ref: str, base: str) -> Any:
        if rel == self.root:
            return self.doc
        if rel not in self.parsed:
            if not self.ctx.exists(rel):
                # the outcome now depends on a file being absent: make the cache see the file list
                self.ctx.index("source_files", source_files)
                raise _MissingFile(f"{ref[:120]!r} from {base}: {rel} is not in the source", rel)
            self.files.add(rel)
            try:
                self.parsed[rel] = _parse(rel, decode_text(self.ctx.read(rel), self.ctx.limits), self.ctx)
            except Rejected as r:
                raise Rejected(r.reason, f"in {rel} (referenced from {base}): {r.detail}") from None
        return self.parsed[rel]

    def _resolve(self, target: tuple, ref: str, base: str) -> Any:
        node = self._load(target[0], ref, base)
        for seg in target[1]:
            if isinstance(node, dict):
                if seg in node:
                    node = node[seg]
                    continue
                if seg.lstrip("-").isdigit() and int(seg) in node:
                    node = node[int(seg)]
                    continue
            elif isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
                node = node[int(seg)]
                continue
            raise Rejected("unresolvable_ref", f"{ref[:120]!r} from {base}: no {'/'.join(target[1])!r} in {target[0]}")
        return node

    def _ref(self, node: dict, ref: str, base: str, mode: str, key: Any) -> Any:
        target = self._target(ref, base)
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if target[0] == self.root:
            self._resolve(target, ref, base)  # must exist, as any other target
            out = {"$ref": "#" + "".join("/" + s.replace("~", "~0").replace("/", "~1") for s in target[1])}
            out.update({k: self._walk(v, base, _child_mode(mode, k, self.kind), k) for k, v in siblings.items()})
            return out
        self.external += 1
        if mode in (_SCHEMA, _SCHEMA_MAP):
            name = self._hoist(target, ref, base)
            prefix = "#/definitions/" if self.kind == "2.0" else "#/components/schemas/"
            out = {"$ref": prefix + name}
            out.update({k: self._walk(v, base, _child_mode(_SCHEMA, k, self.kind), k) for k, v in siblings.items()})
            return out
        content = self._inline(target, mode, key, ref, base)
        if siblings and isinstance(content, dict):  # 3.1 Reference Object: summary/description override
            content = dict(content)
            content.update({k: self._walk(v, base, _child_mode(mode, k, self.kind), k) for k, v in siblings.items()})
        return content

    def _hoist(self, target: tuple, ref: str = "", base: str = "") -> str:
        if target in self.failed:
            raise self.failed[target]
        name = self.homes.get(target)
        if name is None:
            name = self._new_name(target)
            self.homes[target] = name
        if name in self.hoisted:
            return name  # done, or in progress: a cycle, which ends here at an internal ref
        self.hoisted[name] = _PENDING
        try:
            self.hoisted[name] = self._walk(self._resolve(target, ref or "#", base or self.root), target[0], _SCHEMA)
        except Rejected as r:
            self.failed[target] = r
            del self.hoisted[name]
            raise
        return name

    def _new_name(self, target: tuple) -> str:
        file, segs = target
        raw = segs[-1] if segs else posixpath.splitext(posixpath.basename(file))[0]
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("_") or "schema"
        name, i = base, 2
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def _inline(self, target: tuple, mode: str, at: Any, ref: str, base: str) -> Any:
        key = (target, mode, at if at in _NAMED_MAPS else None)
        if key in self.failed:
            raise self.failed[key]
        if key in self.inlined:
            return self.inlined[key]  # shared; _materialize un-shares it after the size check
        if key in self.active:
            raise Rejected("ref_cycle", f"{ref[:120]!r} from {base} leads back to itself through non-schema objects")
        self.active.add(key)
        try:
            value = self._walk(self._resolve(target, ref, base), target[0], mode, key[2])
        except Rejected as r:
            self.failed[key] = r
            raise
        finally:
            self.active.discard(key)
        self.inlined[key] = value
        return value


def source_files(ctx: SourceContext) -> list[str]:
    """The source's file list, as an index: a spec that met a missing file is re-curated when
    files appear or go (the pipeline's cache otherwise only sees the files that were read)."""
    return ctx.files()


def _child_mode(mode: str, key: Any, kind: str, parent: Any = None) -> str:
    """What the value under `key` of an object in `mode` (itself under `parent`) is: a schema, a
    map of schemas, plain data (examples, defaults, enums: a `$ref` key there is data), other."""
    if mode == _DATA:
        return _DATA
    if mode == _SCHEMA_MAP:
        return _SCHEMA
    if mode == _SCHEMA:
        if key in _SUBSCHEMA:
            return _SCHEMA
        if key in _SCHEMA_MAPS:
            return _SCHEMA_MAP
        if key in _DATA_KEYS or key == "examples":
            return _DATA
        return _OTHER
    if parent in _NAMED_MAPS and not (parent == "examples" and kind == "2.0"):
        return _OTHER  # a named object (a response called "default", an example called "value")
    if key == "schema":
        return _SCHEMA
    if key in _DATA_KEYS or key == "value" or (key == "examples" and kind == "2.0"):
        return _DATA
    return _OTHER


def _count_ops(item: Any) -> int:
    if not isinstance(item, dict):
        return 0
    if "$ref" in item and len(item) == 1:
        return 1  # an external path item: counted as one when it is pruned whole
    extra = item.get("additionalOperations")
    return sum(1 for m in METHODS if isinstance(item.get(m), dict)) + (len(extra) if isinstance(extra, dict) else 0)


def _materialize(obj: Any, limits: Any) -> Any:
    """A tree copy of the bundle (inlined targets are shared objects until here), after checking
    its expanded size and depth without expanding it: a diamond of refs cannot blow up memory."""
    memo: dict[int, tuple[int, int, int]] = {}
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        o, done = stack.pop()
        if id(o) in memo:
            continue
        children = list(o.values()) if isinstance(o, dict) else o
        containers = [c for c in children if isinstance(c, (dict, list))]
        if not done:
            stack.append((o, True))
            stack.extend((c, False) for c in containers if id(c) not in memo)
            continue
        nodes, size, depth = 1, 2, 0
        items = o.items() if isinstance(o, dict) else ((None, c) for c in o)
        for k, c in items:
            if k is not None:
                nodes, size = nodes + 1, size + len(str(k)) + 4
            if isinstance(c, (dict, list)):
                n, s, d = memo[id(c)]
            else:
                n, s, d = 1, len(str(c)) + 2, 0
            nodes, size, depth = nodes + n, size + s + 1, max(depth, d)
        memo[id(o)] = (nodes, size, depth + 1)
    if isinstance(obj, (dict, list)):
        nodes, size, depth = memo[id(obj)]
        if nodes > limits.max_yaml_nodes or size > MAX_BUNDLE_BYTES:
            raise Rejected("bundle_too_large", f"bundle has ~{size} bytes, {nodes} nodes")
        if depth > limits.max_depth:
            raise Rejected("too_deep", f"bundle nests {depth} levels (> {limits.max_depth})")
    return _copy(obj)


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


# -- validation ----------------------------------------------------------------------------------


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


def _validate(doc: dict, kind: str) -> None:
    from referencing.exceptions import Unresolvable

    cls = _validator_class(kind)
    try:
        err = next(iter(cls(doc).iter_errors()), None)
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


def _d(o: Any) -> dict:
    return o if isinstance(o, dict) else {}


def _l(o: Any) -> list:
    return o if isinstance(o, list) else []


# -- units ---------------------------------------------------------------------------------------


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


def operation_units(doc: dict, kind: str) -> list[Unit]:
    units = []
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
        title = summary or (op_id or "").strip()[:MAX_TITLE_CHARS] or f"{method.upper()} {path}"
        names = [_d(_deref(doc, p)).get("name") for p in params]
        units.append(
            Unit(
                "operation",
                title,
                text,
                {
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
