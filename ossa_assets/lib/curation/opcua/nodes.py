"""A UANodeSet's nodes as units: the head scan, <Models>, and each node rendered as a YAML summary
(aliases resolved, targets named, LocalizedText picked, Value payloads bounded)."""

from __future__ import annotations

import re
from typing import Any

from ossa_assets.lib.curation.common import Unit, local_name

NS = "http://opcfoundation.org/UA/2011/03/UANodeSet.xsd"
BASE_MODEL = "http://opcfoundation.org/UA/"
NODE_CLASSES = {
    "UAObjectType": "ObjectType", "UAVariableType": "VariableType", "UADataType": "DataType",
    "UAReferenceType": "ReferenceType", "UAObject": "Object", "UAVariable": "Variable",
    "UAMethod": "Method", "UAView": "View",
}
MAX_UNIT_CHARS = 16_000  # a unit is one embedding pair; a 200-entry enum still fits
MAX_TITLE_CHARS = 200
MAX_VALUE_ELEMENTS = 200  # Value payloads (IRDI dictionaries, big arrays) are sampled, not dumped
_ATTRS = ("IsAbstract", "Symmetric", "ValueRank", "ArrayDimensions", "AccessLevel", "Historizing",
          "EventNotifier", "ContainsNoLoops", "MethodDeclarationId")
# Core (ns=0) nodes that NodeSets point at without defining: named so a reader sees
# "i=2368 (AnalogItemType)" instead of a bare number. Aliases and in-file nodes take precedence.
CORE_NAMES = dict(
    (f"i={i}", n) for i, n in [
        (1, "Boolean"), (2, "SByte"), (3, "Byte"), (4, "Int16"), (5, "UInt16"), (6, "Int32"),
        (7, "UInt32"), (8, "Int64"), (9, "UInt64"), (10, "Float"), (11, "Double"), (12, "String"),
        (13, "DateTime"), (14, "Guid"), (15, "ByteString"), (16, "XmlElement"), (17, "NodeId"),
        (18, "ExpandedNodeId"), (19, "StatusCode"), (20, "QualifiedName"), (21, "LocalizedText"),
        (22, "Structure"), (23, "DataValue"), (24, "BaseDataType"), (25, "DiagnosticInfo"),
        (26, "Number"), (27, "Integer"), (28, "UInteger"), (29, "Enumeration"),
        (31, "References"), (32, "NonHierarchicalReferences"), (33, "HierarchicalReferences"),
        (34, "HasChild"), (35, "Organizes"), (36, "HasEventSource"), (37, "HasModellingRule"),
        (38, "HasEncoding"), (39, "HasDescription"), (40, "HasTypeDefinition"),
        (41, "GeneratesEvent"), (44, "Aggregates"), (45, "HasSubtype"), (46, "HasProperty"),
        (47, "HasComponent"), (48, "HasNotifier"), (49, "HasOrderedComponent"),
        (58, "BaseObjectType"), (61, "FolderType"), (62, "BaseVariableType"),
        (63, "BaseDataVariableType"), (68, "PropertyType"), (76, "DataTypeEncodingType"),
        (78, "Mandatory"), (80, "Optional"), (83, "ExposesItsArray"), (84, "Root"),
        (85, "Objects"), (86, "Types"), (87, "Views"), (88, "ObjectTypes"), (89, "VariableTypes"),
        (90, "DataTypes"), (91, "ReferenceTypes"), (290, "Duration"), (294, "UtcTime"),
        (295, "LocaleId"), (296, "Argument"), (884, "Range"), (887, "EUInformation"),
        (2041, "BaseEventType"), (2253, "Server"), (2365, "DataItemType"),
        (2368, "AnalogItemType"), (2372, "DiscreteItemType"), (2373, "TwoStateDiscreteType"),
        (2376, "MultiStateDiscreteType"), (2755, "StateVariableType"), (7594, "EnumValueType"),
        (11508, "OptionalPlaceholder"), (11510, "MandatoryPlaceholder"),
        (17497, "AnalogUnitType"), (17602, "BaseInterfaceType"), (17603, "HasInterface"),
        (17604, "HasAddIn"),
    ]
)
_NAME = re.compile(rb"\s*([A-Za-z_][\w.:-]*)")


def _prolog(raw: bytes) -> tuple[str | None, str | None]:
    """(DOCTYPE name, root element name) from the head, by a linear scan that never parses a DTD
    (a regex over unclosed comments would be quadratic on a hostile head)."""
    head, i = raw[:65_536], 0
    while (i := head.find(b"<", i)) >= 0:
        if head.startswith((b"<!--", b"<?"), i):
            end = head.find(b"-->" if head[i + 1] == 0x21 else b"?>", i + 2)
            if end < 0:
                return None, None
            i = end + 2
            continue
        m = _NAME.match(head, i + 9 if head.startswith(b"<!DOCTYPE", i) else i + 1)
        name = m.group(1).decode("ascii", "replace") if m else None
        return (name, None) if head.startswith(b"<!DOCTYPE", i) else (None, name)
    return None, None


def _models(root) -> list[dict[str, Any]]:
    out = []
    for model in root.iterfind(f"{{{NS}}}Models/{{{NS}}}Model"):
        out.append({
            "model_uri": model.get("ModelUri"),
            "version": model.get("Version"),
            "publication_date": model.get("PublicationDate"),
            "required": [
                {"model_uri": r.get("ModelUri"), "version": r.get("Version"),
                 "publication_date": r.get("PublicationDate")}
                for r in model.findall(f"{{{NS}}}RequiredModel") if r.get("ModelUri")
            ],
        })
    return [m for m in out if m["model_uri"]]


class _NodeSet:
    """A parsed UANodeSet with the lookups a node's rendering needs (aliases, in-file names)."""

    def __init__(self, root):
        self.root = root
        self.namespace_uris = [u.text.strip() for u in root.iterfind(f"{{{NS}}}NamespaceUris/{{{NS}}}Uri") if u.text]
        self.aliases = {a.get("Alias"): (a.text or "").strip()
                        for a in root.iterfind(f"{{{NS}}}Aliases/{{{NS}}}Alias") if a.get("Alias")}
        self.alias_of = {v: k for k, v in sorted(self.aliases.items(), reverse=True)}
        self.models = _models(root)
        self.nodes = [el for el in root if local_name(el.tag) in NODE_CLASSES and el.tag.startswith(f"{{{NS}}}")]
        self.names = {(el.get("NodeId") or "").strip(): _strip_ns(el.get("BrowseName") or "") for el in self.nodes}

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for el in self.nodes:
            c = NODE_CLASSES[local_name(el.tag)]
            counts[c] = counts.get(c, 0) + 1
        return dict(sorted(counts.items()))

    def resolve(self, ref: str) -> tuple[str, str | None]:
        """(NodeId, readable name) of an alias or a NodeId."""
        node_id = self.aliases.get(ref, ref)
        name = ref if ref in self.aliases else (
            self.alias_of.get(node_id) or self.names.get(node_id) or CORE_NAMES.get(node_id))
        return node_id, name or None

    def show(self, ref: str | None) -> str | None:
        if not ref:
            return None
        node_id, name = self.resolve(ref.strip())
        return f"{node_id} ({name})" if name and name != node_id else node_id

    def namespace_of(self, node_id: str) -> str | None:
        m = re.match(r"ns=(\d+);", node_id)
        if not m:
            return node_id.split(";", 1)[0][4:] if node_id.startswith("nsu=") else BASE_MODEL
        k = int(m.group(1))  # ns=1 is the file's first NamespaceUris entry; ns=0 the base model
        return BASE_MODEL if k == 0 else (self.namespace_uris[k - 1] if k <= len(self.namespace_uris) else None)

    def unit(self, el) -> Unit | None:
        node_class = NODE_CLASSES[local_name(el.tag)]
        node_id, browse = el.get("NodeId") or "", el.get("BrowseName") or ""
        name = _strip_ns(browse)
        if not name or not node_id:
            return None  # no BrowseName: nothing a query could name it by
        display = _localized(el, "DisplayName")
        description = _localized(el, "Description")
        parent = el.get("ParentNodeId")
        refs = el.findall(f"{{{NS}}}References/{{{NS}}}Reference")
        summary: dict[str, Any] = {
            "NodeClass": node_class, "NodeId": node_id, "Namespace": self.namespace_of(node_id),
            "BrowseName": browse, "DisplayName": display, "Description": description,
            "SymbolicName": el.get("SymbolicName"), "Parent": self.show(parent),
            "DataType": self.show(el.get("DataType")),
        }
        summary.update({a: el.get(a) for a in _ATTRS})
        inverse = el.find(f"{{{NS}}}InverseName")
        summary["InverseName"] = inverse.text.strip() if inverse is not None and inverse.text else None
        summary["References"] = [self._reference(r) for r in refs] or None
        summary["Definition"] = self._definition(el.find(f"{{{NS}}}Definition"))
        value = el.find(f"{{{NS}}}Value")
        summary["Value"] = _value(value) if value is not None else None
        text = _dump_yaml({k: v for k, v in summary.items() if v not in (None, "", [], {})})
        data_type = self.resolve(el.get("DataType").strip()) if el.get("DataType") else None
        meta: dict[str, Any] = {
            "node_class": node_class, "node_id": node_id, "browse_name": browse,
            "data_type": (data_type[1] or data_type[0]) if data_type else None,
            "data_type_id": data_type[0] if data_type else None,
            "parent": parent, "references": len(refs),
        }
        if len(text) > MAX_UNIT_CHARS:
            meta.update(truncated=True, chars=len(text))
            text = text[:MAX_UNIT_CHARS] + "\n# ... truncated\n"
        return Unit("node", _title(name, display, description, self._parent_name(parent, refs)), text, meta)

    def _parent_name(self, parent: str | None, refs: list) -> str | None:
        """The ParentNodeId's name, else the first named source of an inverse reference (an
        encoding's DataType, the folder organising an object): what the node belongs to."""
        if parent:
            return self.resolve(parent.strip())[1]
        for r in refs:
            if (r.get("IsForward") or "").strip().lower() == "false" and r.text:
                name = self.resolve(r.text.strip())[1]
                if name:
                    return name
        return None

    def _reference(self, r) -> dict[str, str]:
        _, type_name = self.resolve((r.get("ReferenceType") or "").strip())
        key = type_name or r.get("ReferenceType") or "Reference"
        if (r.get("IsForward") or "true").strip().lower() == "false":
            key += " (inverse)"
        return {key: self.show(r.text) or ""}

    def _definition(self, d) -> dict[str, Any] | None:
        if d is None:
            return None
        fields = []
        for f in d.findall(f"{{{NS}}}Field"):
            item = {"Name": f.get("Name"), "DataType": self.show(f.get("DataType")), "Value": f.get("Value"),
                    "ValueRank": f.get("ValueRank"), "IsOptional": f.get("IsOptional"),
                    "Description": _localized(f, "Description")}
            fields.append({k: v for k, v in item.items() if v})
        out = {"Name": d.get("Name"), "IsUnion": d.get("IsUnion"), "IsOptionSet": d.get("IsOptionSet"),
               "Fields": fields}
        return {k: v for k, v in out.items() if v}


def _dump_yaml(obj: Any) -> str:
    """common.dump_yaml's options on libyaml's emitter: a 13 MB NodeSet renders its 5,000 units
    in ~1 s instead of ~7 s. (The pure-Python emitter is the fallback; outputs differ only in
    how rare control characters such as U+0085 are escaped.)"""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(obj, Dumper=dumper, sort_keys=False, allow_unicode=True, width=120,
                     default_flow_style=False)


def _strip_ns(browse_name: str) -> str:
    """`1:FlowRate` -> `FlowRate`: the namespace index means nothing to a reader or a query."""
    head, sep, tail = browse_name.partition(":")
    return tail.strip() if sep and head.isdigit() else browse_name.strip()


def _localized(el, tag: str) -> str | None:
    """The English (or locale-free, else first) text of a LocalizedText child."""
    found = el.findall(f"{{{NS}}}{tag}")
    for pick in (lambda e: not e.get("Locale"), lambda e: e.get("Locale", "").startswith("en"), lambda e: True):
        for e in found:
            if pick(e) and e.text and e.text.strip():
                return e.text.strip()
    return None


def _title(name: str, display: str | None, description: str | None, parent: str | None) -> str:
    """`BrowseName — first line of the Description`. Without a description the parent is put in
    front (`FlowRate/EURange`): thousands of bare `EURange` titles would be one query for
    thousands of different texts."""
    if description:
        line = description.splitlines()[0].strip()
        if len(line) > MAX_TITLE_CHARS:
            cut = line[:MAX_TITLE_CHARS]
            end = cut.rfind(". ")
            line = cut[: end + 1] if end > 40 else cut.rstrip() + "…"
        return f"{name} — {line}"
    base = f"{parent}/{name}" if parent else name
    return f"{base} — {display}" if display and display != name else base


def _value(el) -> Any:
    """A node's Value as plain data, bounded: first MAX_VALUE_ELEMENTS elements, empty leaves
    dropped, ExtensionObject/LocalizedText/NodeId wrappers collapsed to their content."""
    budget = [MAX_VALUE_ELEMENTS]

    def conv(e) -> Any:
        budget[0] -= 1
        kids = list(e)
        if not kids:
            leaf = (e.text or "").strip()
            if local_name(e.tag) == "ByteString" and len(leaf) > 64:  # base64 is noise to train on
                return f"<{len(leaf)} base64 characters>"
            return leaf or None
        out: dict[str, Any] = {}
        repeated: set[str] = set()
        for k in kids:
            if budget[0] <= 0:
                out["..."] = "more elements not shown"
                break
            key = local_name(k.tag)
            v = None if key == "TypeId" else conv(k)  # the Body's element already names the type
            if v is None:
                continue
            if key not in out:
                out[key] = v
                continue
            if key not in repeated:
                out[key], repeated = [out[key]], repeated | {key}
            out[key].append(v)
        if len(out) == 1 and next(iter(out)) in ("Body", "Text", "Identifier", "ExtensionObject"):
            return next(iter(out.values()))
        return out or None

    return conv(el)
