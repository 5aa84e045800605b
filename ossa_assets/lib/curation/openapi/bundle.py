"""Bundling of a multi-file spec (see the package docstring): relative `$ref`s read through
`ctx.read`, schemas hoisted into the schema section, other objects inlined, and the result's
expanded size checked before it is copied out.

The pipeline records an index builder as "module:qualname" and imports it again by that string,
so `source_files` stays a module-level function.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any
from urllib.parse import unquote

from ossa_assets.lib.curation.common import Rejected, SourceContext, decode_text
from ossa_assets.lib.curation.openapi.common import METHODS, _copy, _parse

MAX_BUNDLE_BYTES = 20_000_000  # JSON size of a bundle: above the biggest public specs, and ~1.5 min to validate
PRUNE_MISSING_FILES = True  # see the package docstring: subset sources keep their resolvable part
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
