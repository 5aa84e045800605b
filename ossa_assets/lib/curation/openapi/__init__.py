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

import posixpath
import re
from typing import Any

# `noqa: F401`: these imports also re-export the names of the module this package replaced;
# source_files too, so a curation cache that recorded "ossa_assets.lib.curation.openapi:source_files"
# still loads its index builder.
from ossa_assets.lib.curation import prose
from ossa_assets.lib.curation.common import (  # noqa: F401
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
from ossa_assets.lib.curation.openapi.bundle import (  # noqa: F401
    MAX_BUNDLE_BYTES,
    PRUNE_MISSING_FILES,
    _Bundler,
    source_files,
)
from ossa_assets.lib.curation.openapi.common import METHODS, _copy, _parse  # noqa: F401
from ossa_assets.lib.curation.openapi.units import (  # noqa: F401
    MAX_TITLE_CHARS,
    MAX_UNIT_CHARS,
    _refs,
    operation_units,
    schema_units,
)
from ossa_assets.lib.curation.openapi.validate import _check_ref_loops, _validate, spec_rules

SPEC_SUFFIXES = (".yaml", ".yml", ".json")


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
