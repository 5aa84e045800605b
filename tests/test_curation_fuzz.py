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
    files[f"blank{ext}"] = b"   \n\n  "  # 7 bytes: the pipeline's min_bytes (16) refuses it unread
    files[f"blank_long{ext}"] = b"   \n\n  " * 8  # whitespace that reaches the curator's decode_text
    files[f"binary{ext}"] = bytes(rng.randrange(256) for _ in range(4096))
    files[f"latin1{ext}"] = ("caf\xe9 " * 50).encode("latin-1")
    files[f"utf16{ext}"] = seed.encode("utf-16")
    n = 5000
    files["deep.json"] = b"[" * n + b"]" * n
    # the one .json the CI curator parses: a starter-workflow catalogue entry
    files["properties/deep.properties.json"] = b"[" * n + b"]" * n
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
    files["dtd.xml"] = (b'<?xml version="1.0"?><!DOCTYPE UANodeSet [<!ELEMENT UANodeSet ANY>]>'
                        b'<UANodeSet xmlns="http://opcfoundation.org/UA/2011/03/UANodeSet.xsd"/>')
    files["quadratic.xml"] = (b'<?xml version="1.0"?><!DOCTYPE q [<!ENTITY a "' + b"x" * 50_000 + b'">]>'
                              b"<UANodeSet>" + b"&a;" * 2_000 + b"</UANodeSet>")
    files["alias_bomb.yaml"] = ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + k)}: &{chr(98 + k)} [" + ",".join([f"*{chr(97 + k)}"] * 9) + "]\n" for k in range(8))).encode()
    files["alias_cycle.yaml"] = b"a: &a [1, *a]\nb: *a\n"
    files["alias_merge_cycle.yaml"] = b"a: &a {b: 1, <<: *a}\n"
    files["pytag.yaml"] = b"openapi: !!python/object/apply:os.system ['touch /tmp/ossa-pwned']\n"
    files["pyname.yaml"] = b"stages: !!python/name:os.system\n"
    files["jsonbomb.json"] = b'{"a":' * 3000 + b"1" + b"}" * 3000
    files["nul.yaml"] = b"key: a value long enough\x00\x00\x00"  # > min_bytes, so the curator sees it
    files[f"valid{ext}" if ext != ".yml" else "valid.yml"] = b
    return files


# The exact quarantine reason of every hostile file, per domain. The domain whose curator parses
# a format must name the hostility: OPC UA parses XML; OpenAPI parses YAML and JSON; CI/CD parses
# YAML, and JSON only for starter-workflow catalogue entries (`properties/*.properties.json`).
# A domain that never parses a format refuses it from the suffix alone (`unsupported_format`), and
# a few reasons come from the pipeline before any curator (too_large, empty, too_small: files
# under min_bytes = 16). "{ext}" is the domain's seed suffix (.yaml, .xml, .yml).
DOMAINS = ("openapi", "opcua", "cicd")
DOMAIN_OF = {"openapi": "api_spec", "opcua": "industrial_protocol", "cicd": "devops_workflow"}
UNS = "unsupported_format"
EXPECTED = {  # file -> (openapi, opcua, cicd)
    "huge.yaml":                       ("too_large",       "too_large",  "too_large"),
    "empty{ext}":                      ("empty",           "empty",      "empty"),
    "blank{ext}":                      ("too_small",       "too_small",  "too_small"),
    "blank_long{ext}":                 ("empty",           "empty",      "empty"),
    "binary{ext}":                     ("binary",          "binary",     "binary"),
    "utf16{ext}":                      ("binary",          "binary",     "binary"),  # NULs of UTF-16
    "latin1{ext}":                     ("not_utf8",        "not_utf8",   "not_utf8"),
    "nul.yaml":                        ("binary",          UNS,          "binary"),
    "deep.json":                       ("too_deep",        UNS,          UNS),
    "properties/deep.properties.json": ("too_deep",        UNS,          "too_deep"),
    "jsonbomb.json":                   ("too_deep",        UNS,          UNS),
    "deep.yaml":                       ("too_deep",        UNS,          "too_deep"),
    "deepflow.yaml":                   ("too_deep",        UNS,          "too_deep"),  # libyaml's 1000 levels
    "alias_bomb.yaml":                 ("yaml_alias_bomb", UNS,          "yaml_alias_bomb"),
    "alias_cycle.yaml":                ("yaml_alias_bomb", UNS,          "yaml_alias_bomb"),
    "alias_merge_cycle.yaml":          ("yaml_alias_bomb", UNS,          "yaml_alias_bomb"),
    "pytag.yaml":                      ("yaml_unsafe_tag", UNS,          "yaml_unsafe_tag"),
    "pyname.yaml":                     ("yaml_unsafe_tag", UNS,          "yaml_unsafe_tag"),
    "deep.xml":                        (UNS,               "too_deep",   UNS),
    "lol.xml":                         (UNS,               "unsafe_xml", UNS),  # billion laughs
    "quadratic.xml":                   (UNS,               "unsafe_xml", UNS),  # quadratic blowup
    "xxe.xml":                         (UNS,               "unsafe_xml", UNS),  # external entity
    "xxe_remote.xml":                  (UNS,               "unsafe_xml", UNS),  # external DTD
    "dtd.xml":                         (UNS,               "unsafe_xml", UNS),  # an internal DTD, no entity
}
# The seeded truncations and byte flips are degenerate rather than hostile, and which bytes they
# hit is an accident of the seed: each must be refused as broken input of its format (or, when a
# flip happens to leave the file valid, curated), never as a curator error or an unknown format.
BROKEN = (
    {"too_small", "not_utf8", "malformed_yaml", "not_openapi", "invalid_openapi", "unsupported_openapi_version"},
    {"too_small", "not_utf8", "malformed_xml", "not_nodeset", "invalid_nodeset"},
    {"too_small", "not_utf8", "malformed_yaml", "not_pipeline", "invalid_gitlab_ci"},
)

# Bounds of the child's run, from measurements on the 2-core dev box (load average 3-5 from other
# suites). Peak RSS is VmHWM of the whole child (interpreter, imports, curation), 10 runs per
# domain; seconds are curate_source alone, 20 runs per domain:
#   peak RSS  openapi 49.7-49.8 MB, opcua 34.5-34.7 MB, cicd 32.9-33.1 MB
#   seconds   openapi 0.22-0.56,    opcua 0.03-0.11,    cicd 0.04-0.11
# Bound = the measured maximum plus 25 % or 100 MB, whichever is larger (memory), and plus 25 % or
# 5 s, whichever is larger (time: shared CPUs; a regressed alias-cycle walk took 20 s, an
# expanded billion laughs never ends).
MEASURED_PEAK_MB = {"openapi": 49.8, "opcua": 34.7, "cicd": 33.1}  # bounds: 149.8, 134.7, 133.1 MB
MEASURED_SECONDS = {"openapi": 0.56, "opcua": 0.11, "cicd": 0.11}  # bounds: 5.56, 5.11, 5.11 s
PEAK_MB_BOUND = {d: m + max(0.25 * m, 100.0) for d, m in MEASURED_PEAK_MB.items()}
SECONDS_BOUND = {d: t + max(0.25 * t, 5.0) for d, t in MEASURED_SECONDS.items()}

CHILD = textwrap.dedent('''
    import json, resource, sys, time
    from pathlib import Path
    from ossa_assets.lib.curation import pipeline
    from ossa_assets.lib.curation.sources import SourceSpec, list_files
    root, cache, domain = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    spec = SourceSpec(name="fuzz", domain=domain, kind="local", path=str(root))
    t = time.perf_counter()
    r = pipeline.curate_source(spec, list_files(spec, cache), cache, pipeline.CurationSettings())
    seconds = time.perf_counter() - t
    # VmHWM, the peak RSS of this process's own address space: ru_maxrss would not do, Linux
    # carries the parent's peak over fork/vfork + exec into it (a child of a 400 MB pytest
    # reports 400 MB before it has done anything)
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        peak_mb = int(next(x for x in status if x.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration):
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "seconds": seconds,
        "peak_mb": peak_mb,
        "seen": r.files_seen,
        "docs": [d.path for d in r.documents],
        "quarantine": {q.path: q.reason for q in r.quarantined},
        "details": {q.path: q.detail for q in r.quarantined},
        "texts": [d.text for d in r.documents] + [u["text"] for d in r.documents for u in d.units],
    }))
''')


def _curate_in_child(tmp_path: Path, files: dict[str, bytes], domain: str, huge: bool = True) -> dict:
    """Write `files` (plus a sparse 60 MB huge.yaml) as a local source and curate it in a child."""
    root = tmp_path / "src"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    if huge:  # > 50 MB, sparse on disk: must be rejected from its size alone, never read
        with open(root / "huge.yaml", "wb") as f:
            f.truncate(60 * 1024 * 1024)
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(tmp_path / "cache"), domain],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_bounds(sub: str, res: dict) -> None:
    assert res["peak_mb"] < PEAK_MB_BOUND[sub], (
        f"peak memory {res['peak_mb']:.0f} MB > {PEAK_MB_BOUND[sub]:.0f} MB (measured {MEASURED_PEAK_MB[sub]} MB)")
    assert res["seconds"] < SECONDS_BOUND[sub], (
        f"{res['seconds']:.1f} s > {SECONDS_BOUND[sub]:.1f} s (measured {MEASURED_SECONDS[sub]} s)")


@pytest.mark.parametrize("sub", DOMAINS)
def test_fuzzed_hostile_files_are_quarantined_with_bounded_memory(tmp_path, sub):
    rng = random.Random(f"ossa-fuzz-{sub}")
    files = _hostile(rng, sub)
    res = _curate_in_child(tmp_path, files, DOMAIN_OF[sub])
    assert res["seen"] == len(files) + 1
    accounted = set(res["docs"]) | set(res["quarantine"])
    assert accounted == set(files) | {"huge.yaml"}, "every file is curated or quarantined"
    q = res["quarantine"]
    assert all(q.values()), "every quarantined file has a reason"

    ext = Path(SEED_FILES[sub][0]).suffix
    col = DOMAINS.index(sub)
    expected = {name.format(ext=ext): reasons[col] for name, reasons in EXPECTED.items()}
    got = {name: q.get(name, "(curated)") for name in expected}
    wrong = {n: (got[n], expected[n], res["details"].get(n, "")) for n in expected if got[n] != expected[n]}
    assert not wrong, f"{sub}: file -> (got, expected, detail): {wrong}"
    generated = set(files) - set(expected) - {n for n in files if n.startswith("valid")}
    assert generated == {n for n in files if n.startswith(("truncated", "flipped"))}, "a hostile file not in EXPECTED"
    loose = {n: q[n] for n in generated if n in q and q[n] not in BROKEN[col]}
    assert not loose, f"{sub}: a truncated/flipped file refused for a reason other than broken input: {loose}"

    valid = next(n for n in files if n.startswith("valid"))
    assert valid in res["docs"], (valid, q.get(valid))
    assert not Path("/tmp/ossa-pwned").exists(), "a YAML tag executed code"
    assert not any("root:x:0:0" in t for t in res["texts"]), "an external entity was resolved"
    _check_bounds(sub, res)


def test_memory_bound_trips_on_a_file_that_costs_memory(tmp_path):
    """The bound is not decoration: the same child, given one 16.5 MB JSON file (1.5 million short
    strings, parsed and then refused as not_openapi), peaks at about 270 MB (measured 270 MB in
    1.0-1.4 s), far above the openapi bound, and `_check_bounds` fails on the memory line."""
    big = b"[" + b",".join(b'"s%07d"' % i for i in range(1_500_000)) + b"]"
    res = _curate_in_child(tmp_path, {"big.json": big}, DOMAIN_OF["openapi"], huge=False)
    assert res["quarantine"] == {"big.json": "not_openapi"}
    with pytest.raises(AssertionError, match="peak memory"):
        _check_bounds("openapi", res)
