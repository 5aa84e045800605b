"""OPC UA curation: UANodeSet XML as node units, protocol docs as prose sections.

`curate_file(relpath, raw, ctx)` never raises. Reason codes of a rejection:
  unsupported_format  a suffix that is neither NodeSet XML nor prose (.c .h .out .xsd .json .bsd ...)
  empty | too_large | binary | not_utf8            from `decode_text`
  unsafe_xml          a DTD (entities, external subsets: billion laughs, XXE) in a file that claims
                      to be a UANodeSet; nothing is expanded or fetched
  too_deep | malformed_xml                         from `safe_xml_parse` (10k-deep nesting, truncation)
  invalid_nodeset     a UANodeSet without a single node element
  not_nodeset         other XML: a different root element (DocBook man pages, ModelDesign files), a
                      UANodeSet outside the 2011/03 namespace, or a DOCTYPE in a file whose head has
                      no UANodeSet element (decided by a scan, so that DTD is never parsed)

Dependencies: each RequiredModel is resolved against the source-wide index "nodeset_models"
(ModelUri -> the files declaring it, built from every .xml's <Models> head). Missing models are
recorded in meta, never a rejection; http://opcfoundation.org/UA/ counts as present (`builtin`)
when no file provides it, since every OPC UA server has it built in.
  too_short           prose with fewer than five words (from `prose.curate_prose`)
  curator_error       an unexpected exception; the detail is the exception type

Unit text is a YAML summary of the node, not the node's XML re-serialised: ElementTree writes
`ns0:` prefixes and drops comments, raw XML spends most tokens on markup, and the summary carries
what the XML only implies: aliases resolved (`i=37` -> HasModellingRule), targets named from the
file itself (`ns=1;i=6001 (FlowRate)`) or a table of core nodes, the namespace URI of the node. The
document text stays the NodeSet XML as is, so the raw syntax is still trained on.
"""

from __future__ import annotations

import re
from typing import Any

# `noqa: F401`: these imports also re-export the names of the module this package replaced;
# _build_index too, so a curation cache that recorded "ossa_assets.lib.curation.opcua:_build_index"
# still loads its index builder.
from ossa_assets.lib.curation import prose
from ossa_assets.lib.curation.common import (  # noqa: F401
    FileOutcome,
    ParsedDocument,
    Rejected,
    SourceContext,
    Unit,
    decode_text,
    local_name,
    safe_xml_parse,
    spdx_license,
)
from ossa_assets.lib.curation.opcua.deps import INDEX, _build_index, _dependencies  # noqa: F401
from ossa_assets.lib.curation.opcua.nodes import (  # noqa: F401
    BASE_MODEL,
    CORE_NAMES,
    MAX_TITLE_CHARS,
    MAX_UNIT_CHARS,
    MAX_VALUE_ELEMENTS,
    NODE_CLASSES,
    NS,
    _NodeSet,
    _prolog,
)

# "OPC Foundation MIT License 1.00" (UA-Nodeset's per-file header; VDMA's files say "MIT License 1.00")
_MIT_HEADER = re.compile(r"((?:OPC Foundation )?MIT License)\s+(\d+\.\d+)")
_UANODESET_TAG = re.compile(rb"<(?:[\w.-]+:)?UANodeSet[\s/>]")


def curate_file(relpath: str, raw: bytes, ctx: SourceContext) -> FileOutcome:
    """One file of an OPC UA source as a document (NodeSet or prose) or a reasoned rejection."""
    try:
        suffix = "." + relpath.rsplit(".", 1)[-1].lower() if "." in relpath.rsplit("/", 1)[-1] else ""
        if suffix == ".xml":
            return FileOutcome(relpath, "document", document=_nodeset(relpath, raw, ctx))
        if suffix in prose.PROSE_SUFFIXES:
            doc = prose.curate_prose(relpath, decode_text(raw, ctx.limits), ctx.limits.max_units)
            doc.units = doc.units[: ctx.limits.max_units]
            return FileOutcome(relpath, "document", document=doc)
        raise Rejected("unsupported_format", f"{suffix or 'no suffix'}: not NodeSet XML or prose")
    except Rejected as r:
        return FileOutcome.rejected(relpath, r)
    except Exception as e:  # the contract: never raise, say what broke
        return FileOutcome.rejected(relpath, Rejected("curator_error", type(e).__name__))


# -- the NodeSet ---------------------------------------------------------------------------------


def _nodeset(relpath: str, raw: bytes, ctx: SourceContext) -> ParsedDocument:
    text = decode_text(raw, ctx.limits)
    doctype, _ = _prolog(raw)
    if doctype is not None and doctype.split(":")[-1] != "UANodeSet" and not _UANODESET_TAG.search(raw, 0, 65_536):
        # DocBook man pages declare entities too: not hostile, just not NodeSets (and their DTD
        # is never parsed). A DTD in front of a UANodeSet element goes on to be unsafe_xml.
        raise Rejected("not_nodeset", f"DOCTYPE {doctype}: not a UANodeSet (DTD not parsed)")
    root = safe_xml_parse(raw, ctx.limits)
    if root.tag != f"{{{NS}}}UANodeSet":
        raise Rejected("not_nodeset", f"root element {root.tag[:120]} is not {{{NS}}}UANodeSet")
    ns = _NodeSet(root)
    if not ns.nodes:
        raise Rejected("invalid_nodeset", "a UANodeSet without a single node")
    units: list[Unit] = []
    skipped = truncated = 0
    for el in ns.nodes:
        if len(units) >= ctx.limits.max_units:
            break
        unit = ns.unit(el)
        if unit is None:
            skipped += 1
            continue
        truncated += bool(unit.meta.get("truncated"))
        units.append(unit)
    meta: dict[str, Any] = {
        "last_modified": root.get("LastModified"),
        "namespace_uris": ns.namespace_uris,
        "aliases": len(ns.aliases),
        "nodes_total": len(ns.nodes),
        "node_classes": ns.class_counts(),
        "units": len(units),
        "units_capped": len(units) + skipped < len(ns.nodes),
        "units_skipped_untitled": skipped,
        "units_text_truncated": truncated,
        **_dependencies(relpath, ns.models, ctx),
    }
    license_ = spdx_license(text)
    m = _MIT_HEADER.search(text[: max(text.find("UANodeSet"), 0)][:16_000])  # the header, not a Description
    if license_ is None and m:
        license_ = f"{m.group(1)} {m.group(2)}"
        meta["license_spdx"] = "MIT"  # both headers carry the MIT licence text verbatim
    return ParsedDocument("nodeset", text, units, license_, meta)
