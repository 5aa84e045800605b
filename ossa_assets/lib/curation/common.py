"""What every domain curator shares: the outcome model, limits, and hardened parsers.

A domain curator (the `openapi`, `opcua` and `cicd` packages) turns one file of a source into a
`FileOutcome`: a `ParsedDocument` (the whole document plus its training units), or a rejection
with a machine-readable reason. Parsers here never fetch, never execute, and bound memory:
YAML alias expansion, nesting depth and file size are capped before anything large is built.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import yaml


class Rejected(Exception):
    """A file that cannot be a training document, with a short reason code and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:300]


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 50_000_000  # files above this are rejected from their size alone, never read
    max_depth: int = 64  # nesting of YAML/JSON/XML structures
    max_yaml_nodes: int = 2_000_000  # YAML nodes after alias expansion (billion-laughs guard)
    max_units: int = 5_000  # units per document (a 13 MB NodeSet has ~10k nodes: keep the first)


@dataclass
class Unit:
    """A training/embedding unit inside a document: an operation, a node, a job, a section."""

    unit_type: str  # operation | node | job | section | ...
    title: str  # summary / operationId, BrowseName, job name, heading: the "query" side of a pair
    text: str  # the unit's own content (YAML/XML/prose)
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable, type-specific


@dataclass
class ParsedDocument:
    format: str  # openapi | nodeset | prose | gitlab_ci | github_actions | azure_pipelines | ...
    text: str  # the document as it is trained on (a multi-file spec: the bundled document)
    units: list[Unit] = field(default_factory=list)
    license: str | None = None  # as the document states it (SPDX id or name), else None
    meta: dict[str, Any] = field(default_factory=dict)  # version, lint warnings, dependencies...


@dataclass
class FileOutcome:
    relpath: str
    status: str  # "document" | "rejected"
    reason: str = ""
    detail: str = ""
    document: ParsedDocument | None = None

    @classmethod
    def rejected(cls, relpath: str, r: Rejected) -> "FileOutcome":
        return cls(relpath, "rejected", r.reason, r.detail)


class SourceContext:
    """A curator's window on the rest of its source: reading other files, bounded to the root.

    Every read is recorded, so the caller can cache a file's outcome under the hashes of the
    files it depended on (a multi-file spec is re-curated when one of its fragments changes).
    """

    def __init__(self, files: Iterable[str], read: Callable[[str], bytes], limits: Limits, source: str = ""):
        self.source = source  # the source's name: what a file at its root belongs to
        self._files = set(files)
        self._read = read
        self.limits = limits
        self.reads: set[str] = set()
        self.used_index: dict[str, str] = {}  # index name -> "module:function" that builds it
        self._indexes: dict[str, Any] = {}

    def files(self) -> list[str]:
        return sorted(self._files)

    def resolve(self, base: str, ref: str) -> str:
        """A relative reference from file `base`, normalised; refuses to leave the source root."""
        if "://" in ref or ref.startswith("//"):
            raise Rejected("remote_ref", f"{ref!r}: nothing is fetched from the network")
        if ref.startswith("/"):
            raise Rejected("ref_outside_root", f"{ref!r} is absolute")
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(base), ref))
        if joined == ".." or joined.startswith("../"):
            raise Rejected("ref_outside_root", f"{ref!r} from {base} leaves the source root")
        return joined

    def exists(self, relpath: str) -> bool:
        return relpath in self._files

    def read(self, relpath: str) -> bytes:
        if relpath not in self._files:
            raise Rejected("missing_ref", f"{relpath} is not in the source")
        self.reads.add(relpath)
        return self._read(relpath)

    def index(self, name: str, build: Callable[["SourceContext"], Any]) -> Any:
        """A source-wide index (e.g. NodeSet ModelUri -> file), built once per source.

        Using it makes the outcome depend on the index's content: the caller rebuilds the index
        (by `build`'s module and name, so `build` must be a module-level function) and
        re-curates the file when the index changed. Reads made while building are not
        dependencies of the file; the index digest stands for them.
        """
        self.used_index[name] = f"{build.__module__}:{build.__qualname__}"
        if name not in self._indexes:
            before = set(self.reads)
            self._indexes[name] = build(self)
            self.reads = before
        return self._indexes[name]

    def share_indexes_with(self, other: "SourceContext") -> None:
        """Per-file contexts of one source share built indexes (built once per run)."""
        self._indexes = other._indexes


# -- text ------------------------------------------------------------------------------------------


def decode_text(raw: bytes, limits: Limits) -> str:
    """UTF-8 text of a file, or Rejected(empty | too_large | binary | not_utf8)."""
    if not raw.strip():
        raise Rejected("empty")
    if len(raw) > limits.max_bytes:
        raise Rejected("too_large", f"{len(raw)} bytes > {limits.max_bytes}")
    if b"\0" in raw[:8192]:
        raise Rejected("binary", "NUL byte in the first 8 KiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Rejected("not_utf8", str(e)) from None
    return text.replace("\r\n", "\n")


_SPDX = re.compile(r"SPDX-License-Identifier:\s*([A-Za-z0-9.+\-() ]+?)\s*(?:\*/|-->|$)", re.M)


def spdx_license(text: str) -> str | None:
    """The SPDX identifier a file declares in its header, if any."""
    m = _SPDX.search(text[:4096])
    return m.group(1).strip() if m else None


# -- YAML --------------------------------------------------------------------------------------------


class _Composer(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser: ~4x faster
    """SafeLoader that understands GitLab's `!reference [job, key]` (as a plain marker mapping)
    and rejects everything else that is tagged (`!!python/object`, `!Ref`, ...)."""


def _reference(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return {"!reference": loader.construct_sequence(node, deep=True)}


_Composer.add_constructor("!reference", _reference)


def _check_node_graph(node: yaml.Node, max_nodes: int, max_depth: int) -> tuple[int, int]:
    """(nodes, depth) the document would have with every alias expanded, computed without
    expanding; Rejected when it would be infinite, too large or too deep.

    Aliases share node objects, so one memoised post-order walk over the node graph is linear in
    the file while the expansion (what construction, json.dumps or a recursive walk builds) can be
    exponential in size (billion laughs: `yaml_alias_bomb`) and in depth (an anchor that nests
    the previous one 60 levels deep, 40 times over: `too_deep`, although no spot of the text is
    deeper than 64). Depth is measured on the expanded tree, so it does not depend on the order
    in which shared nodes are reached. A node that contains itself through an alias (`a: &x
    [*x]`, `a: &x {b: *x}`, `a: &x {<<: *x}`) is a cycle: its expansion never ends, so it is
    refused as `yaml_alias_bomb` the moment the walk meets a node that is still open.
    """
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    open_: set[int] = set()  # the nodes on the current path from the root: meeting one is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        n, done = stack.pop()
        key = id(n)
        if not done and key in size:  # a shared node, already measured
            continue
        if isinstance(n, yaml.ScalarNode):
            size[key] = height[key] = 1
            continue
        children = (
            [c for kv in n.value for c in kv] if isinstance(n, yaml.MappingNode) else list(n.value)
        )
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            if height[key] > max_depth:
                raise Rejected("too_deep", f"nesting deeper than {max_depth}")
            if size[key] > max_nodes:
                raise Rejected("yaml_alias_bomb", f"more than {max_nodes} nodes once aliases are expanded")
            continue
        if key in open_:
            raise Rejected("yaml_alias_bomb", _ALIAS_CYCLE)
        open_.add(key)
        stack.append((n, True))
        for c in children:
            if id(c) in open_:
                raise Rejected("yaml_alias_bomb", _ALIAS_CYCLE)
            if id(c) not in size:
                stack.append((c, False))
    return size[id(node)], height[id(node)]


_ALIAS_CYCLE = "alias cycle: a node contains itself through an alias, so its expansion never ends"


def safe_yaml_load_all(text: str, limits: Limits) -> list[Any]:
    """All documents of a YAML stream, safely: no arbitrary tags, bounded alias expansion and
    depth. GitLab's `!reference` comes back as `{"!reference": [...]}`."""
    docs: list[Any] = []
    try:
        loader = _Composer(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                _check_node_graph(node, limits.max_yaml_nodes, limits.max_depth)
                docs.append(loader.construct_document(node))
        finally:
            loader.dispose()
    except Rejected:
        raise
    except yaml.constructor.ConstructorError as e:
        # only an unknown tag is "unsafe"; other constructor errors (unhashable keys such as
        # `{{ placeholder }}` templates) are plain malformed YAML
        reason = "yaml_unsafe_tag" if "constructor for the tag" in str(e) else "malformed_yaml"
        raise Rejected(reason, _first_line(e)) from None
    except yaml.YAMLError as e:
        if "maximum nesting depth" in str(getattr(e, "problem", "")):
            # libyaml (0.2.5+) refuses nesting past 1000 levels while scanning: hostile depth,
            # not a typo, so the same reason as the depth check above
            raise Rejected("too_deep", f"{_first_line(e)}: exceeded libyaml's maximum nesting depth") from None
        raise Rejected("malformed_yaml", _first_line(e)) from None
    except RecursionError:
        raise Rejected("too_deep", "YAML nesting exceeds the parser's recursion limit") from None
    return docs


def safe_yaml_load(text: str, limits: Limits) -> Any:
    docs = safe_yaml_load_all(text, limits)
    if not docs:
        raise Rejected("empty", "no YAML document")
    return docs[0] if len(docs) == 1 else docs


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


# -- JSON --------------------------------------------------------------------------------------------


def safe_json_load(text: str, limits: Limits) -> Any:
    import json

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise Rejected("malformed_json", str(e)) from None
    except RecursionError:
        raise Rejected("too_deep", "JSON nesting exceeds the parser's recursion limit") from None
    check_depth(obj, limits.max_depth)
    return obj


def check_depth(obj: Any, max_depth: int) -> None:
    """Iterative depth check of a parsed structure (a recursive walk could itself overflow)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > max_depth:
            raise Rejected("too_deep", f"nesting deeper than {max_depth}")
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)


# -- XML ---------------------------------------------------------------------------------------------


def safe_xml_parse(raw: bytes, limits: Limits):
    """An ElementTree root, parsed with defusedxml (no DTDs, entities or external references)
    after a streaming pass that rejects over-deep documents before building the tree."""
    import io

    import defusedxml.ElementTree as ET
    from defusedxml import DefusedXmlException

    try:
        depth = 0
        for event, _ in ET.iterparse(io.BytesIO(raw), events=("start", "end"), forbid_dtd=True):
            depth += 1 if event == "start" else -1
            if depth > limits.max_depth:
                raise Rejected("too_deep", f"XML nesting deeper than {limits.max_depth}")
        return ET.fromstring(raw, forbid_dtd=True)
    except DefusedXmlException as e:
        raise Rejected("unsafe_xml", type(e).__name__) from None
    except ET.ParseError as e:
        raise Rejected("malformed_xml", str(e)) from None


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # libyaml's emitter: ~5x faster
    """Multi-line strings (CI scripts, descriptions) as `|` blocks, the way people write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value and not any(c in value for c in "\t\r") and value == value.rstrip(" "):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump_yaml(obj: Any) -> str:
    """Deterministic, readable YAML for units (keys in document order, unicode kept)."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False)
