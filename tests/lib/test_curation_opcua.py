"""OPC UA curation on real files: the shipped sample, the shared corpus, and hostile XML made here.

No mocks: every test curates real bytes through `curate_file` with a SourceContext over a real
directory. Hostile inputs run under an audit hook that records every file opened outside the
source and every socket touched, so "nothing was read or fetched" is observed, not assumed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from ossa_assets.lib.curation.common import Limits, SourceContext
from ossa_assets.lib.curation.opcua import curate_file

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "ossa_assets" / "corpora" / "sample" / "opcua"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "corpora"
OPCUA = SHARED / "opcua"
NS = "http://opcfoundation.org/UA/2011/03/UANodeSet.xsd"
needs_shared = pytest.mark.skipif(not OPCUA.is_dir(), reason=f"shared corpus not present at {OPCUA}")


def source_ctx(root: Path, limits: Limits | None = None) -> SourceContext:
    files = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
    return SourceContext(files, lambda rel: (root / rel).read_bytes(), limits or Limits())


def curate_dir(root: Path, limits: Limits | None = None) -> dict:
    ctx = source_ctx(root, limits)
    return {rel: curate_file(rel, (root / rel).read_bytes(), ctx) for rel in ctx.files()}


def nodeset(body: str, models: str = "", prolog: str = '<?xml version="1.0" encoding="utf-8"?>\n') -> bytes:
    return f'{prolog}<UANodeSet xmlns="{NS}">{models}{body}</UANodeSet>\n'.encode()


def model(uri: str, version: str = "1.0.0", requires: tuple[tuple[str, str], ...] = ()) -> str:
    req = "".join(f'<RequiredModel ModelUri="{u}" Version="{v}"/>' for u, v in requires)
    return f'<NamespaceUris><Uri>{uri}</Uri></NamespaceUris><Models><Model ModelUri="{uri}" Version="{version}">{req}</Model></Models>'


ONE_NODE = ('<UAObjectType NodeId="ns=1;i=1" BrowseName="1:ValveType"><DisplayName>ValveType</DisplayName>'
            '<Description>A valve.</Description></UAObjectType>')


# -- the shipped sample: every file accepted -------------------------------------------------------


def test_sample_every_file_is_a_document_with_units():
    outcomes = curate_dir(SAMPLE)
    assert len(outcomes) == 32
    bad = {rel: (o.reason, o.detail) for rel, o in outcomes.items() if o.status != "document"}
    assert bad == {}
    for rel, o in outcomes.items():
        doc = o.document
        if rel.endswith(".xml"):
            assert doc.format == "nodeset"
            assert doc.units and {u.unit_type for u in doc.units} == {"node"}
            assert len(doc.units) == doc.meta["nodes_total"] == sum(doc.meta["node_classes"].values())
            assert doc.text == (SAMPLE / rel).read_text(encoding="utf-8")
            assert all(u.title and u.text for u in doc.units)
            json.dumps(doc.meta)  # JSON-serialisable
        else:
            assert doc.format == "prose" and doc.units and {u.unit_type for u in doc.units} == {"section"}


def test_sample_pump_titles_text_and_meta():
    outcomes = curate_dir(SAMPLE)
    doc = outcomes["nodesets/CentrifugalPump.NodeSet2.xml"].document
    by_id = {u.meta["node_id"]: u for u in doc.units}
    assert [u.title for u in doc.units[:3]] == [
        "PumpOperatingModeEnum — How the pump is currently being controlled.",
        "PumpOperatingModeEnum/EnumStrings",  # no description: the parent names it
        "CentrifugalPumpType — A motor-driven centrifugal pump with flow, pressure and speed measurements.",
    ]
    flow = by_id["ns=1;i=6001"]
    assert flow.title == "FlowRate — Volumetric flow measured downstream of the discharge valve."
    assert flow.meta == {"node_class": "Variable", "node_id": "ns=1;i=6001", "browse_name": "1:FlowRate",
                         "data_type": "Double", "data_type_id": "i=11", "parent": "ns=1;i=1001", "references": 4}
    assert "DataType: i=11 (Double)" in flow.text
    assert "Parent: ns=1;i=1001 (CentrifugalPumpType)" in flow.text
    assert "- HasTypeDefinition: i=2368 (AnalogItemType)" in flow.text
    assert "- HasProperty: ns=1;i=6101 (EURange)" in flow.text
    assert "Namespace: http://ossa.example/UA/CentrifugalPump/" in flow.text
    assert by_id["ns=1;i=6101"].title == "FlowRate/EURange"
    mode = by_id["ns=1;i=6004"]
    assert mode.meta["data_type"] == "PumpOperatingModeEnum" and mode.meta["data_type_id"] == "ns=1;i=3001"
    enum = by_id["ns=1;i=3001"]
    assert enum.meta["node_class"] == "DataType" and "- HasSubtype (inverse): i=29 (Enumeration)" in enum.text
    assert "  - Name: Manual\n    Value: '1'" in enum.text  # the Definition's fields
    assert by_id["ns=1;i=3002"].text.endswith("    - Maintenance\n")  # EnumStrings' Value
    assert by_id["ns=1;i=7001"].meta["node_class"] == "Method"
    meta = doc.meta
    assert meta["model_uri"] == "http://ossa.example/UA/CentrifugalPump/" and meta["version"] == "1.0.0"
    assert meta["builtin"] == ["http://opcfoundation.org/UA/"]
    assert (meta["resolved"], meta["missing"], meta["closed"]) == ({}, [], True)
    assert doc.license is None  # the sample files state no licence

    cold = outcomes["nodesets/ColdStorage.NodeSet2.xml"].document
    assert cold.units[0].title == "Objects/ColdStore — Cold Store North"  # inverse Organizes from i=85
    dosing = outcomes["nodesets/DosingPump.NodeSet2.xml"].document
    # ReferenceType="i=37" written as a NodeId, named through the alias table
    assert "- HasModellingRule: i=78 (Mandatory)" in dosing.units[1].text


def test_sample_required_model_missing_is_kept_and_recorded():
    outcomes = curate_dir(SAMPLE)
    for rel in ("nodesets/CncSpindle.NodeSet2.xml", "nodesets/TankLevelSensor.NodeSet2.xml"):
        o = outcomes[rel]
        assert o.status == "document"
        meta = o.document.meta
        assert [r["model_uri"] for r in meta["required_models"]] == [
            "http://opcfoundation.org/UA/", "http://opcfoundation.org/UA/DI/"]
        assert meta["missing"] == ["http://opcfoundation.org/UA/DI/"]
        assert meta["resolved"] == {} and meta["closed"] is False
    tank = outcomes["nodesets/TankLevelSensor.NodeSet2.xml"].document
    assert tank.units[0].title.startswith("RadarLevelTransmitterType — Non-contact radar transmitter")
    assert "Namespace: http://ossa.example/UA/LevelSensing/" in tank.units[0].text  # ns=2 -> second Uri


def test_required_model_present_resolves_to_the_file(tmp_path):
    shutil.copy(SAMPLE / "nodesets" / "TankLevelSensor.NodeSet2.xml", tmp_path / "Tank.NodeSet2.xml")
    (tmp_path / "di").mkdir()
    di = model("http://opcfoundation.org/UA/DI/", "1.03.0", (("http://opcfoundation.org/UA/", "1.04"),))
    (tmp_path / "di" / "Opc.Ua.Di.NodeSet2.xml").write_bytes(nodeset(ONE_NODE, di))
    ctx = source_ctx(tmp_path)
    o = curate_file("Tank.NodeSet2.xml", (tmp_path / "Tank.NodeSet2.xml").read_bytes(), ctx)
    meta = o.document.meta
    assert meta["resolved"] == {"http://opcfoundation.org/UA/DI/": "di/Opc.Ua.Di.NodeSet2.xml"}
    assert (meta["missing"], meta["missing_transitive"], meta["closed"]) == ([], [], True)
    assert meta["warnings"] == ["http://opcfoundation.org/UA/DI/ required at 1.04.0, di/Opc.Ua.Di.NodeSet2.xml has 1.03.0"]
    # the index stands for the files it read: none of them is a per-file dependency
    assert ctx.reads == set() and "nodeset_models" in ctx.used_index


def test_units_are_capped_and_the_total_recorded():
    outcomes = curate_dir(SAMPLE, Limits(max_units=3))
    doc = outcomes["nodesets/CentrifugalPump.NodeSet2.xml"].document
    assert len(doc.units) == 3 and doc.meta["nodes_total"] == 11 and doc.meta["units_capped"] is True


def test_outcome_is_deterministic():
    a, b = curate_dir(SAMPLE), curate_dir(SAMPLE)
    assert {k: asdict(v) for k, v in a.items()} == {k: asdict(v) for k, v in b.items()}


# -- the shared corpus -----------------------------------------------------------------------------


@needs_shared
def test_shared_corpus_outcomes_and_dependency_graph():
    t0 = time.perf_counter()
    outcomes = curate_dir(OPCUA)
    assert time.perf_counter() - t0 < 40
    assert not [r for r, o in outcomes.items() if o.reason == "curator_error"]
    assert outcomes["NODESET_DEPENDENCIES.json"].reason == "unsupported_format"
    assert outcomes["eclipse-mosquitto/man/mosquitto.8.xml"].reason == "not_nodeset"  # DocBook, DTD unread
    assert outcomes["OPCFoundation-UA-Nodeset/GDS/OpcUaGdsModel.xml"].reason == "not_nodeset"  # ModelDesign
    assert outcomes["OPCFoundation-UA-Nodeset/Schema/UANodeSet.xsd"].reason == "unsupported_format"
    assert {o.reason for r, o in outcomes.items() if r.endswith(".c")} == {"unsupported_format"}
    assert all(o.status == "document" for r, o in outcomes.items() if r.endswith((".md", ".rst")))

    derived = json.loads((OPCUA / "NODESET_DEPENDENCIES.json").read_text())
    graph, order = derived["nodesets"], {rel: i for i, rel in enumerate(derived["load_order"])}
    nodesets = {r for r, o in outcomes.items() if o.document and o.document.format == "nodeset"}
    assert nodesets == set(graph)
    for rel, expected in graph.items():
        meta = outcomes[rel].document.meta
        assert [m["model_uri"] for m in meta["models"]] == expected["models"], rel
        assert sorted(r["model_uri"] for r in meta["required_models"]) == sorted(expected["requires"]), rel
        assert sorted(meta["missing"] + meta["missing_transitive"]) == sorted(expected["missing"]), rel
        assert meta["closed"] is expected["closed"], rel
        assert all(order[dep] < order[rel] for dep in meta["resolved"].values()), rel  # loads after its deps

    machinery = outcomes["OPCFoundation-UA-Nodeset/Machinery/Opc.Ua.Machinery.NodeSet2.xml"].document
    assert machinery.meta["resolved"] == {"http://opcfoundation.org/UA/DI/": "OPCFoundation-UA-Nodeset/DI/Opc.Ua.Di.NodeSet2.xml"}
    pump = outcomes["OPCFoundation-UA-.NETStandard/samples/WotCon/AggregationClient/Documents/SamplePump.NodeSet2.xml"]
    assert pump.status == "document" and pump.document.meta["missing"] == ["http://opcfoundation.org/UA/Pumps/"]

    di = outcomes["OPCFoundation-UA-Nodeset/DI/Opc.Ua.Di.NodeSet2.xml"].document
    assert (di.license, di.meta["license_spdx"]) == ("OPC Foundation MIT License 1.00", "MIT")
    assert outcomes["OPCFoundation-UA-Nodeset/LaserSystems/LaserSystem-Example.NodeSet2.xml"].document.license == "MIT License 1.00"
    assert pump.document.license == "OPC Foundation MIT License 1.00"  # "Licensed under the ..." form
    boiler = outcomes["OPCFoundation-UA-.NETStandard/samples/MinimalApi/MinimalBoilerServer/Model/Boiler.NodeSet2.xml"]
    assert boiler.document.license is None  # no header in that repository's files


_MEASURE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from ossa_assets.lib.curation.common import Limits, SourceContext
    from ossa_assets.lib.curation.opcua import curate_file

    def peak_mb():  # VmHWM starts afresh at exec; ru_maxrss would carry pytest's own peak over
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    root, rel = Path(sys.argv[1]), sys.argv[2]
    files = [p.relative_to(root).as_posix() for p in root.rglob("*.xml")]
    raw = (root / rel).read_bytes()
    base = peak_mb()
    t = time.perf_counter()
    o = curate_file(rel, raw, SourceContext(files, lambda r: (root / r).read_bytes(), Limits()))
    print(json.dumps({"seconds": time.perf_counter() - t, "bytes": len(raw), "status": o.status,
                      "reason": o.reason, "units": len(o.document.units) if o.document else 0,
                      "meta": o.document.meta if o.document else None, "base_mb": base, "peak_mb": peak_mb()}))
""")


def _measure(root: Path, rel: str) -> dict:
    """Curation of one file in a child process, so the peak RSS measured is this file's alone."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(root), rel], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    print(f"\n{rel}: {r['bytes'] / 1e6:.1f} MB, {r['units']} units, {r['seconds']:.2f} s, "
          f"peak RSS {r['peak_mb']:.0f} MB ({r['base_mb']:.0f} MB after imports and reading the file)")
    return r


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
@needs_shared
def test_largest_shared_nodeset_is_bounded_in_time_and_memory():
    xml = [p for p in OPCUA.rglob("*.xml") if b"UANodeSet.xsd" in p.read_bytes()[:4096]]
    largest = max(xml, key=lambda p: p.stat().st_size)
    r = _measure(OPCUA, largest.relative_to(OPCUA).as_posix())
    assert r["status"] == "document" and r["units"] == r["meta"]["nodes_total"] > 400
    assert r["seconds"] < 10 and r["peak_mb"] - r["base_mb"] < 150


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_13mb_nodeset_is_capped_at_max_units_without_blowing_up(tmp_path):
    # the size of the biggest companion specs: 13,001 nodes, ~13 MB
    node = ('<UAVariable NodeId="ns=1;i={i}" BrowseName="1:Signal{i}" ParentNodeId="ns=1;i=1" DataType="Double">'
            '<DisplayName>Signal {i}</DisplayName><Description>Measured value {i}. ' + "Lorem ipsum dolor sit amet. " * 25
            + '</Description><References><Reference ReferenceType="HasComponent" IsForward="false">ns=1;i=1</Reference>'
            '<Reference ReferenceType="i=40">i=2368</Reference></References></UAVariable>\n')
    body = ('<Aliases><Alias Alias="Double">i=11</Alias><Alias Alias="HasComponent">i=47</Alias></Aliases>'
            '<UAObjectType NodeId="ns=1;i=1" BrowseName="1:BigType"><DisplayName>BigType</DisplayName></UAObjectType>\n'
            + "".join(node.format(i=i) for i in range(2, 13_002)))
    (tmp_path / "Big.NodeSet2.xml").write_bytes(nodeset(body, model("urn:big")))
    r = _measure(tmp_path, "Big.NodeSet2.xml")
    assert r["bytes"] > 12_000_000 and r["status"] == "document"
    assert r["units"] == Limits().max_units and r["meta"]["nodes_total"] == 13_001 and r["meta"]["units_capped"]
    assert r["seconds"] < 20 and r["peak_mb"] - r["base_mb"] < 600


# -- hostile and broken XML ------------------------------------------------------------------------

_WATCH: dict = {"on": False, "root": "", "seen": []}


def _audit(event: str, args: tuple) -> None:
    if not _WATCH["on"]:
        return
    if event == "open" and isinstance(args[0], (str, bytes)) and not str(args[0]).startswith(_WATCH["root"]):
        _WATCH["seen"].append((event, str(args[0])))
    elif event.startswith(("socket.", "urllib.", "subprocess.", "os.system", "os.exec")):
        _WATCH["seen"].append((event, repr(args)[:120]))


@pytest.fixture(scope="module")
def listener():
    """A local TCP port a hostile DTD points at: any fetch would show up as a connection."""
    sys.addaudithook(_audit)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    yield srv
    srv.close()


def _hostile_cases(port: int, secret: Path) -> dict[str, tuple[bytes, str]]:
    lol = "".join(f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10))
    pump = (SAMPLE / "nodesets" / "CentrifugalPump.NodeSet2.xml").read_bytes()
    latin1 = nodeset(ONE_NODE.replace("A valve.", "Ventil für 90 °C."), model("urn:v"),
                     '<?xml version="1.0" encoding="ISO-8859-1"?>\n').decode().encode("latin-1")
    xxe = '<UAObject NodeId="ns=1;i=1" BrowseName="1:X"><Description>&xxe;</Description></UAObject>'
    return {
        "billion_laughs": (nodeset("<UAObject NodeId='ns=1;i=1' BrowseName='1:X'><Description>&lol9;</Description></UAObject>",
                                   prolog=f'<!DOCTYPE UANodeSet [<!ENTITY lol0 "lol">{lol}]>'), "unsafe_xml"),
        "billion_laughs_other_doctype": (f'<!DOCTYPE lolz [<!ENTITY lol0 "lol">{lol}]><UANodeSet>&lol9;</UANodeSet>'.encode(),
                                         "unsafe_xml"),
        "xxe_etc_passwd": (nodeset(xxe, prolog='<!DOCTYPE UANodeSet [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'), "unsafe_xml"),
        "xxe_local_secret": (nodeset(xxe, prolog=f'<!DOCTYPE UANodeSet [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>'), "unsafe_xml"),
        "external_dtd_subset": (nodeset(ONE_NODE, prolog=f'<!DOCTYPE UANodeSet SYSTEM "http://127.0.0.1:{port}/ua.dtd">'), "unsafe_xml"),
        "external_parameter_entity": (nodeset(ONE_NODE, prolog=f'<!DOCTYPE UANodeSet [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/p"> %p;]>'), "unsafe_xml"),
        "docbook_with_external_entity": (f'<?xml version="1.0"?><!DOCTYPE refentry [<!ENTITY v SYSTEM "{secret.as_uri()}">]><refentry>&v;</refentry>'.encode(), "not_nodeset"),
        "deep_10000": (nodeset("<a>" * 10_000 + "</a>" * 10_000), "too_deep"),
        "truncated": (pump[: len(pump) // 2], "malformed_xml"),
        "not_utf8": (latin1, "not_utf8"),
        "empty": (b"", "empty"),
        "blank": (b" \n\t\n", "empty"),
        "other_namespace": (b'<UANodeSet xmlns="urn:not-opc"><UAObject NodeId="i=1" BrowseName="X"/></UANodeSet>', "not_nodeset"),
        "no_nodes": (nodeset("", model("urn:empty")), "invalid_nodeset"),
    }


def test_hostile_xml_is_rejected_without_reading_or_fetching(tmp_path, listener):
    secret = tmp_path / "secret.txt"
    marker = "OSSA-XXE-MARKER-7f3a"
    secret.write_text(marker)
    src = tmp_path / "src"
    src.mkdir()
    cases = _hostile_cases(listener.getsockname()[1], secret)
    for name, (raw, _) in cases.items():
        (src / f"{name}.xml").write_bytes(raw)
    ctx = source_ctx(src)
    curate_file("warmup.xml", nodeset(ONE_NODE), ctx)  # lazy imports happen before watching
    passwd = Path("/etc/passwd").read_text() if Path("/etc/passwd").exists() else ""
    _WATCH.update(on=True, root=str(src), seen=[])
    try:
        results = {}
        for name, (raw, expected) in cases.items():
            t = time.perf_counter()
            results[name] = (curate_file(f"{name}.xml", raw, ctx), expected, time.perf_counter() - t)
    finally:
        _WATCH["on"] = False
    for name, (o, expected, seconds) in results.items():
        assert (name, o.status, o.reason) == (name, "rejected", expected), o.detail
        assert seconds < 2, name
        shown = json.dumps(asdict(o))
        assert marker not in shown and "root:x:0:0" not in shown and (not passwd or passwd[:40] not in shown)
    assert _WATCH["seen"] == []  # no file outside the source opened, no socket, no process
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing connected to the DTD's server


def test_other_suffixes_and_a_broken_input_never_raise():
    ctx = source_ctx(SAMPLE)
    for rel in ("tutorial_pubsub_mqtt.c", "api.h", "run.out", "Opc.Ua.Types.xsd", "NODESET_DEPENDENCIES.json",
                "Opc.Ua.Di.Types.bsd", "mosquitto.conf", "Makefile"):
        assert curate_file(rel, b"int main(void) { return 0; }\n", ctx).reason == "unsupported_format", rel
    assert curate_file("short.md", b"# Title\n\ntoo short\n", ctx).reason == "too_short"
    broken = curate_file("x.xml", None, ctx)  # a caller bug must still come back as an outcome
    assert (broken.status, broken.reason, broken.detail) == ("rejected", "curator_error", "AttributeError")


def test_nodes_without_browse_name_are_skipped_and_counted(tmp_path):
    raw = nodeset(ONE_NODE + '<UAVariable NodeId="ns=1;i=2" BrowseName=""><DisplayName>x</DisplayName></UAVariable>',
                  model("urn:v"))
    o = curate_file("v.xml", raw, SourceContext(["v.xml"], lambda r: raw, Limits()))
    assert [u.title for u in o.document.units] == ["ValveType — A valve."]
    assert o.document.meta["units_skipped_untitled"] == 1 and o.document.meta["units_capped"] is False
