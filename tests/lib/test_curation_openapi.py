"""OpenAPI curation without Dagster: single- and multi-file specs, bundling, validation, units,
and the real corpora (the manifest's INVALID fixtures, the shipped sample, digitalocean)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator==0.9.0 validates api_spec files")

from ossa_assets.lib.curation import openapi  # noqa: E402
from ossa_assets.lib.curation.common import Limits, SourceContext  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "corpora"
SAMPLE = Path(__file__).resolve().parents[2] / "ossa_assets" / "corpora" / "sample" / "openapi"

# Mermade marks this one invalid for its YAML: a flow mapping closed left of its key's indentation
# (`value: {` ... ` }`). PyYAML, which common.py parses with, accepts that, so the spec is valid.
KNOWN_ACCEPTED_INVALID = {"openapi/Mermade-openapi3-examples/3.0/fail/OAI/api-with-examples.yaml"}


def _ctx(root: Path, limits: Limits = Limits()) -> SourceContext:
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return SourceContext(files, lambda rel: (root / rel).read_bytes(), limits)


def _write(root: Path, files: dict[str, str]) -> SourceContext:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return _ctx(root)


def _curate(root: Path, rel: str, ctx: SourceContext | None = None):
    ctx = ctx or _ctx(root)
    return openapi.curate_file(rel, (root / rel).read_bytes(), ctx)


SPEC_30 = """\
openapi: 3.0.3
info:
  title: Pets
  version: '1'
  license: {name: MIT}
paths:
  /pets/{petId}:
    parameters:
      - {name: petId, in: path, required: true, schema: {type: string}}
      - {name: X-Trace, in: header, schema: {type: string}}
    get:
      summary: Fetch one pet
      tags: [pets]
      parameters:
        - {name: X-Trace, in: header, description: overrides the path-level one, schema: {type: string}}
      responses:
        200:
          description: the pet
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Pet'}
    delete:
      operationId: deletePet
      responses:
        '204': {description: gone}
  /health:
    get:
      responses:
        '200': {description: up}
x-internal: {note: extensions in paths are not path items}
components:
  schemas:
    Pet:
      description: |
        A pet in the store.
        Second line.
      type: object
      properties:
        owner: {$ref: '#/components/schemas/Owner'}
    Owner:
      type: object
      properties:
        address: {$ref: '#/components/schemas/Address'}
    Address: {type: string}
"""

SPEC_31 = {
    "openapi": "3.1.0",
    "info": {"title": "Hooks", "version": "1", "license": {"name": "Apache 2.0", "identifier": "Apache-2.0"}},
    "paths": {"/things": {"post": {"summary": "Create a thing", "responses": {"201": {"description": "made"}}}}},
    "webhooks": {
        "thingCreated": {"post": {"operationId": "onThingCreated", "responses": {"200": {"description": "ok"}}}}
    },
}

SPEC_20 = """\
swagger: '2.0'
info: {title: Legacy, version: '1'}
paths:
  /orders:
    get:
      summary: List orders
      responses:
        '200':
          description: orders
          schema: {type: array, items: {$ref: '#/definitions/Order'}}
definitions:
  Order: {type: object, description: An order., properties: {id: {type: integer}}}
"""


def test_single_file_30_31_and_20_specs(tmp_path):
    ctx = _write(tmp_path, {"a.yaml": SPEC_30, "b.json": json.dumps(SPEC_31), "c.yml": SPEC_20})

    a = _curate(tmp_path, "a.yaml", ctx)
    assert a.status == "document", a.detail
    doc = a.document
    assert doc.format == "openapi" and doc.text == SPEC_30 and doc.license == "MIT"
    assert doc.meta["openapi_version"] == "3.0.3" and doc.meta["title"] == "Pets"
    assert doc.meta["operations"] == 3 and doc.meta["bundled_files"] == []
    ops = [u for u in doc.units if u.unit_type == "operation"]
    # a unit read alone names its API (info.title); its own name stays in meta["name"]
    assert [u.title for u in ops] == ["Fetch one pet — Pets", "deletePet — Pets", "GET /health — Pets"]
    assert [u.meta["name"] for u in ops] == ["Fetch one pet", "deletePet", "GET /health"]
    assert {u.meta["api"] for u in ops} == {"Pets"}
    get = ops[0]
    # path-level parameters merged in, the operation's own X-Trace wins
    assert get.meta["parameters"] == ["petId", "X-Trace"]
    assert "overrides the path-level one" in get.text and get.text.startswith("/pets/{petId}:\n  get:\n")
    assert get.meta["schemas"] == ["Pet", "Owner"]  # direct, then one level down; not Address
    assert get.meta["tags"] == ["pets"] and get.meta["method"] == "get" and get.meta["summary"] == "Fetch one pet"
    assert ops[1].meta["operation_id"] == "deletePet" and ops[1].meta["parameters"] == ["petId", "X-Trace"]
    schemas = {u.meta["name"]: u for u in doc.units if u.unit_type == "schema"}
    assert schemas["Pet"].title == "Pet: A pet in the store." and schemas["Pet"].meta["refs"] == ["Owner"]
    assert schemas["Address"].title == "Address"

    b = _curate(tmp_path, "b.json", ctx)
    assert b.status == "document", b.detail
    assert b.document.license == "Apache-2.0"  # the SPDX identifier over the name
    hook = [u for u in b.document.units if u.meta.get("webhook")]
    assert [(u.title, u.meta["path"]) for u in hook] == [("onThingCreated — Hooks", "thingCreated")]

    capped = openapi.curate_file("a.yaml", SPEC_30.encode(), _ctx(tmp_path, Limits(max_units=2)))
    assert [u.meta["name"] for u in capped.document.units] == ["Fetch one pet", "deletePet"]
    assert capped.document.meta["units_truncated"] and capped.document.meta["schemas"] == 3

    c = _curate(tmp_path, "c.yml", ctx)
    assert c.status == "document", c.detail
    assert c.document.meta["openapi_version"] == "2.0" and c.document.license is None
    op, schema = c.document.units
    assert (op.title, op.meta["schemas"]) == ("List orders — Legacy", ["Order"])
    assert (schema.unit_type, schema.title) == ("schema", "Order: An order.")


ROOT = """\
openapi: 3.0.3
info: {title: Split, version: '1'}
paths:
  /nodes:
    $ref: paths/nodes.yaml
  /nodes/{id}:
    get:
      summary: One node
      parameters:
        - $ref: 'common/params.yaml#/id'
      responses:
        '200':
          description: the node
          content:
            application/json:
              schema: {$ref: 'schemas/node.yaml'}
        default: {$ref: '#/components/responses/Problem'}
components:
  responses:
    Problem:
      description: an error
      content:
        application/json:
          schema: {$ref: 'common/defs.json#/components/schemas/a~1b~0c'}
  schemas:
    Tree: {$ref: 'schemas/node.yaml'}
"""


def _multi_file(tmp_path: Path) -> SourceContext:
    return _write(
        tmp_path,
        {
            "api/root.yaml": ROOT,
            "api/paths/nodes.yaml": (
                "get:\n  summary: All nodes\n  responses:\n    '200':\n      description: nodes\n"
                "      content:\n        application/json:\n          schema:\n"
                "            type: array\n            items: {$ref: '../schemas/node.yaml'}\n"
            ),
            "api/common/params.yaml": "id: {name: id, in: path, required: true, schema: {type: string}}\n",
            # a cycle across files: node -> edge -> node; and an internal ref inside a fragment
            "api/schemas/node.yaml": (
                "type: object\ndescription: A graph node.\nproperties:\n"
                "  edges: {type: array, items: {$ref: 'edge.yaml#/Edge'}}\n"
            ),
            "api/schemas/edge.yaml": (
                "Edge:\n  type: object\n  properties:\n    to: {$ref: './node.yaml'}\n    kind: {$ref: '#/Kind'}\n"
                "Kind: {type: string, enum: [directed, undirected]}\n"
            ),
            "api/common/defs.json": json.dumps(
                {"components": {"schemas": {"a/b~c": {"type": "object", "properties": {"code": {"type": "integer"}}}}}}
            ),
        },
    )


def test_multi_file_spec_is_bundled_with_cycles_hoisted(tmp_path):
    ctx = _multi_file(tmp_path)
    out = _curate(tmp_path, "api/root.yaml", ctx)
    assert out.status == "document", out.detail
    doc = out.document
    assert doc.meta["bundled_files"] == [
        "api/common/defs.json",
        "api/common/params.yaml",
        "api/paths/nodes.yaml",
        "api/schemas/edge.yaml",
        "api/schemas/node.yaml",
    ]
    assert ctx.reads == set(doc.meta["bundled_files"])  # every read went through ctx.read
    bundled = openapi.safe_yaml_load(doc.text, Limits())
    refs = openapi._refs(bundled)
    assert refs and all(r.startswith("#/") for r in refs)  # nothing external is left
    schemas = bundled["components"]["schemas"]
    # the root's `Tree: {$ref: schemas/node.yaml}` is the home of node.yaml; edge is hoisted
    assert schemas["Tree"]["description"] == "A graph node."
    assert schemas["Edge"]["properties"]["to"] == {"$ref": "#/components/schemas/Tree"}
    assert schemas["Edge"]["properties"]["kind"] == {"$ref": "#/components/schemas/Kind"}
    assert schemas["Tree"]["properties"]["edges"]["items"] == {"$ref": "#/components/schemas/Edge"}
    assert schemas["a_b_c"]["properties"]["code"] == {"type": "integer"}  # ~1 and ~0 unescaped
    assert list(schemas) == ["Tree", "Edge", "Kind", "a_b_c"] and doc.meta["hoisted_schemas"] == 3
    # non-schema refs are inlined: the path item, the parameter
    assert bundled["paths"]["/nodes"]["get"]["summary"] == "All nodes"
    assert bundled["paths"]["/nodes/{id}"]["get"]["parameters"][0]["name"] == "id"
    ops = {u.meta["name"]: u for u in doc.units if u.unit_type == "operation"}
    assert set(ops) == {"All nodes", "One node"}
    assert ops["One node"].meta["parameters"] == ["id"]
    assert ops["One node"].meta["schemas"] == ["Tree", "a_b_c", "Edge"]
    again = _curate(tmp_path, "api/root.yaml", _ctx(tmp_path))
    assert again.document.text == doc.text and again.document.meta == doc.meta  # deterministic


@pytest.mark.parametrize(
    ("ref", "reason", "in_detail"),
    [
        ("../../outside.yaml", "ref_outside_root", "outside.yaml"),
        ("https://example.com/schemas/pet.yaml", "remote_ref", "example.com"),
        ("//example.com/pet.yaml", "remote_ref", "example.com"),
        ("missing.yaml#/Pet", "unresolvable_ref", "missing.yaml"),
        ("present.yaml#/NotThere", "unresolvable_ref", "present.yaml#/NotThere"),
        ("urn:example:pet", "unresolvable_ref", "urn:example:pet"),
    ],
)
def test_bad_refs_are_rejected_with_the_ref_named(tmp_path, ref, reason, in_detail):
    spec = (
        "openapi: 3.0.3\ninfo: {title: Bad, version: '1'}\npaths: {}\n"
        f"components:\n  schemas:\n    Pet: {{$ref: '{ref}'}}\n"
    )
    ctx = _write(tmp_path, {"outside.yaml": "type: string\n", "api/spec.yaml": spec, "api/present.yaml": "Pet: {}\n"})
    out = _curate(tmp_path, "api/spec.yaml", ctx)
    assert (out.status, out.reason) == ("rejected", reason), out.detail
    assert in_detail in out.detail
    assert "outside.yaml" not in ctx.reads


def test_operations_whose_files_are_missing_are_pruned(tmp_path):
    # a subset of a repository (as digitalocean in the shared corpus): keep what resolves
    spec = (
        "openapi: 3.0.3\ninfo: {title: Subset, version: '1'}\npaths:\n"
        "  /a:\n    get: {$ref: 'ops/a.yaml'}\n    post: {$ref: 'ops/gone.yaml'}\n"
        "  /b:\n    $ref: 'ops/gone-too.yaml'\n"
    )
    ctx = _write(tmp_path, {"spec.yaml": spec, "ops/a.yaml": "summary: Get a\nresponses: {'200': {description: ok}}\n"})
    out = _curate(tmp_path, "spec.yaml", ctx)
    assert out.status == "document", out.detail
    assert [u.title for u in out.document.units] == ["Get a — Subset"]
    assert out.document.meta["pruned"] == {
        "operations": 2,
        "descriptions": 0,
        "missing_files": 2,
        "examples": ["ops/gone-too.yaml", "ops/gone.yaml"],
    }
    assert "source_files" in ctx.used_index  # absent files matter: the cache must see the file list

    everything_missing = "openapi: 3.0.3\ninfo: {title: X, version: '1'}\npaths:\n  /a:\n    get: {$ref: 'nope.yaml'}\n"
    ctx = _write(tmp_path, {"all-gone.yaml": everything_missing})
    out = _curate(tmp_path, "all-gone.yaml", ctx)
    assert (out.status, out.reason) == ("rejected", "unresolvable_ref") and "nope.yaml" in out.detail


def test_cycles_that_cannot_be_hoisted_are_rejected(tmp_path):
    head = "openapi: 3.1.0\ninfo: {title: Loop, version: '1'}\n"
    ctx = _write(
        tmp_path,
        {
            # a path item whose callback refers back to the same path item file
            "cb.yaml": head + "paths:\n  /a: {$ref: 'item.yaml'}\n",
            "item.yaml": (
                "post:\n  responses: {'200': {description: ok}}\n"
                "  callbacks:\n    again:\n      '{$request.body#/url}': {$ref: 'item.yaml'}\n"
            ),
            # schemas that are nothing but refs to each other
            "ring.yaml": head
            + (
                "components:\n  schemas:\n    A: {$ref: '#/components/schemas/B'}\n"
                "    B: {$ref: '#/components/schemas/A'}\n"
            ),
        },
    )
    for rel in ("cb.yaml", "ring.yaml"):
        out = _curate(tmp_path, rel, ctx)
        assert (out.status, out.reason) == ("rejected", "ref_cycle"), (rel, out.detail)


def test_a_ref_diamond_cannot_blow_up_the_bundle(tmp_path):
    # 12 files, each listing its successor 10 times: 10^11 nodes if expanded, a few hundred read
    files = {"spec.yaml": "openapi: 3.0.3\ninfo: {title: Bomb, version: '1'}\npaths: {}\nx-data: {$ref: 'f0.yaml'}\n"}
    for k in range(12):
        files[f"f{k}.yaml"] = "- {$ref: 'f%d.yaml'}\n" % (k + 1) * 10 if k < 11 else "- leaf\n"
    ctx = _write(tmp_path, files)
    t = time.perf_counter()
    out = _curate(tmp_path, "spec.yaml", ctx)
    assert (out.status, out.reason) == ("rejected", "bundle_too_large"), out.detail
    assert time.perf_counter() - t < 5


def test_the_validator_cannot_fetch(tmp_path):
    # past the bundler (which refuses remote refs itself), the validator's resolver refuses too:
    # an address that would hang for a minute if anything tried to connect to it
    spec = openapi.safe_yaml_load(SPEC_30, Limits())
    spec["components"]["schemas"]["Address"] = {"$ref": "http://10.255.255.1/schema.json#/Address"}
    t = time.perf_counter()
    with pytest.raises(openapi.Rejected) as e:
        openapi._validate(openapi._copy(spec), "3.0")  # _copy: the JSON model curate_file validates
    assert e.value.reason == "remote_ref" and "10.255.255.1" in e.value.detail
    assert time.perf_counter() - t < 5


def test_validation_and_spec_rules(tmp_path):
    head31 = "openapi: 3.1.0\ninfo: {title: R, version: '1'}\n"
    ctx = _write(
        tmp_path,
        {
            "schema-error.yaml": "openapi: 3.0.3\ninfo: {title: R}\npaths: {}\n",
            "both-examples.yaml": head31
            + (
                "components:\n  parameters:\n    p: {name: p, in: query, schema: {}, example: 1,"
                " examples: {one: {value: 1}}}\n"
            ),
            "enum-default.yaml": head31 + "servers:\n  - url: 'https://{v}.example.com'\n"
            "    variables: {v: {enum: [a], default: b}}\ncomponents: {}\n",
            "header-name.yaml": head31
            + "components:\n  parameters:\n    h: {name: 'Bad[Header]', in: header, schema: {}}\n",
            "link-fields.yaml": head31 + "components:\n  links:\n    l: {operationId: x, body: {url: 'https://x'}}\n",
            # a property named "example" next to one named "examples" is no example at all
            "fine.yaml": head31
            + (
                "components:\n  schemas:\n    S:\n      properties:\n        example: {type: string}\n"
                "        examples: {type: object}\n      example: {examples: {}, $ref: 'not-a-ref.yaml'}\n"
            ),
            "v4.yaml": "openapi: 4.0.0\ninfo: {title: R, version: '1'}\n",
            "v12.json": json.dumps({"swagger": "1.2", "info": {}}),
        },
    )
    expect = {
        "schema-error.yaml": ("invalid_openapi", "'version' is a required property"),
        "both-examples.yaml": ("invalid_openapi", "'example' and 'examples'"),
        "enum-default.yaml": ("invalid_openapi", "is not in its enum"),
        "header-name.yaml": ("invalid_openapi", "not an HTTP token"),
        "link-fields.yaml": ("invalid_openapi", "unknown fields ['body']"),
        "fine.yaml": ("", ""),
        "v4.yaml": ("unsupported_openapi_version", "4.0.0"),
        "v12.json": ("unsupported_openapi_version", "1.2"),
    }
    for rel, (reason, detail) in expect.items():
        out = _curate(tmp_path, rel, ctx)
        assert (out.reason, detail in out.detail) == (reason, True), (rel, out.reason, out.detail)


def test_other_files(tmp_path):
    ctx = _write(
        tmp_path,
        {
            "guide.md": "# Pets API\n\nHow to call the pets API, with examples of every request.\n",
            "schema.json": json.dumps({"type": "object", "properties": {}}),
            "list.yaml": "- openapi\n",
            "model.xml": "<a/>",
            "broken.yaml": "openapi: 3.0.0\ninfo: [unclosed\n",
            "recursion.json": "[" * 5000 + "]" * 5000,
        },
    )
    guide = _curate(tmp_path, "guide.md", ctx)
    assert guide.status == "document" and guide.document.format == "prose"
    assert [u.title for u in guide.document.units] == ["Pets API"]
    reasons = {
        rel: _curate(tmp_path, rel, ctx).reason
        for rel in ("schema.json", "list.yaml", "model.xml", "broken.yaml", "recursion.json")
    }
    assert reasons == {
        "schema.json": "not_openapi",
        "list.yaml": "not_openapi",
        "model.xml": "unsupported_format",
        "broken.yaml": "malformed_yaml",
        "recursion.json": "too_deep",
    }


def test_long_operations_are_capped(tmp_path):
    big = {
        "type": "object",
        "properties": {f"field{i}": {"type": "string", "description": "x" * 200} for i in range(200)},
    }
    spec = {
        "openapi": "3.0.3",
        "info": {"title": "Big", "version": "1"},
        "paths": {
            "/big": {
                "post": {
                    "summary": "Big body",
                    "requestBody": {"content": {"application/json": {"schema": big}}},
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
    }
    ctx = _write(tmp_path, {"big.json": json.dumps(spec)})
    unit = _curate(tmp_path, "big.json", ctx).document.units[0]
    assert unit.meta["truncated"] and len(unit.text) <= openapi.MAX_UNIT_CHARS + 20
    assert unit.text.endswith("# ... truncated\n")


# -- the real corpora --------------------------------------------------------------------------------


def _manifest_invalid() -> list[str]:
    rows = [json.loads(line) for line in (SHARED / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return sorted(r["file"] for r in rows if r["domain"] == "openapi" and r["note"].startswith("INVALID"))


@pytest.mark.skipif(not (SHARED / "manifest.jsonl").exists(), reason="shared corpora not present")
def test_the_manifests_invalid_fixtures_are_rejected():
    root = SHARED / "openapi"
    ctx = _ctx(root)
    invalid = _manifest_invalid()
    assert len(invalid) >= 80
    accepted, reasons = set(), {}
    for file in invalid:
        out = openapi.curate_file(file.removeprefix("openapi/"), (SHARED / file).read_bytes(), ctx)
        if out.status == "document":
            accepted.add(file)
        else:
            reasons[file] = out.reason
    assert accepted == KNOWN_ACCEPTED_INVALID
    # not_openapi: five gluecon "fixtures" are bare schema snippets; the others fail on their refs
    assert set(reasons.values()) <= {"invalid_openapi", "not_openapi", "unresolvable_ref", "remote_ref"}
    assert sum(r == "invalid_openapi" for r in reasons.values()) >= 75


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shipped sample corpus not present")
def test_every_sample_spec_is_accepted_with_operation_units():
    ctx = _ctx(SAMPLE)
    for rel in ctx.files():
        out = openapi.curate_file(rel, (SAMPLE / rel).read_bytes(), ctx)
        assert out.status == "document", (rel, out.reason, out.detail)
        ops = [u for u in out.document.units if u.unit_type == "operation"]
        assert ops and all(u.title and u.text for u in ops), rel


@pytest.mark.skipif(not (SHARED / "openapi" / "digitalocean-openapi").is_dir(), reason="shared corpora not present")
def test_digitalocean_root_spec_is_bundled():
    root = SHARED / "openapi" / "digitalocean-openapi"
    rel = "specification/DigitalOcean-public.v2.yaml"
    ctx = _ctx(root)
    t = time.perf_counter()
    out = openapi.curate_file(rel, (root / rel).read_bytes(), ctx)
    seconds = time.perf_counter() - t
    assert out.status == "document", out.detail
    doc = out.document
    assert len(doc.meta["bundled_files"]) >= 200 and ctx.reads == set(doc.meta["bundled_files"])
    # the corpus ships 7 of its resource folders: the other operations' files are absent
    assert doc.meta["operations"] >= 30 and doc.meta["pruned"]["operations"] > 600
    assert doc.license == "Apache 2.0" and doc.meta["title"] == "DigitalOcean API"
    assert "$ref: resources/" not in doc.text and "$ref: '../" not in doc.text
    titles = {u.title for u in doc.units}
    assert {"List All SSH Keys — DigitalOcean API", "Retrieve an Existing Action — DigitalOcean API"} <= titles
    assert seconds < 30


def test_operation_titles_name_the_api_once(tmp_path):
    spec = (
        "openapi: 3.0.3\ninfo:\n  title: |\n    Pets\n    The store's second line\n  version: '1'\npaths:\n"
        "  /pets:\n    get: {summary: List all Pets, responses: {'200': {description: ok}}}\n"
        "    post: {operationId: addPet, responses: {'200': {description: ok}}}\n"
    )
    untitled = "openapi: 3.0.3\ninfo: {title: '', version: '1'}\npaths:\n  /a:\n    get: {summary: Get a, responses: {'200': {description: ok}}}\n"
    ctx = _write(tmp_path, {"pets.yaml": spec, "untitled.yaml": untitled})
    ops = _curate(tmp_path, "pets.yaml", ctx).document.units
    # only the first line of a long title; not repeated where the name already says it
    assert [u.title for u in ops] == ["List all Pets", "addPet — Pets"]
    assert [u.meta["api"] for u in ops] == ["Pets", "Pets"]
    assert [u.title for u in _curate(tmp_path, "untitled.yaml", ctx).document.units] == ["Get a"]
