"""Definitions load, and their shape is pinned by a snapshot so changes show up in review.

Regenerate the snapshot after an intended change: OSSA_UPDATE_SNAPSHOTS=1 pytest tests/test_definitions.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import dagster as dg
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def _describe(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        spec = node.assets_def.specs_by_key[key]
        pdef = node.partitions_def
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(spec.kinds),
            "owners": sorted(spec.owners),
            "deps": sorted(d.to_user_string() for d in node.parent_keys),
            "partitions": None if pdef is None else type(pdef).__name__,
            "partition_keys": list(pdef.get_partition_keys())
            if isinstance(pdef, dg.StaticPartitionsDefinition)
            else None,
            "pools": sorted(node.pools or []),
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
            "description": bool(spec.description),
        }
    checks = sorted(
        f"{c.asset_key.to_user_string()}:{c.name}" for c in graph.asset_check_keys
    )
    blocking = sorted(
        f"{s.asset_key.to_user_string()}:{s.name}"
        for a in defs.assets
        for s in a.check_specs
        if s.blocking
    )
    return {
        "assets": assets,
        "checks": checks,
        "blocking_checks": blocking,
        "jobs": sorted(j.name for j in defs.jobs),
        "sensors": sorted(s.name for s in defs.sensors),
        "resources": sorted(defs.resources),
    }


def test_definitions_load_and_match_snapshot():
    from ossa_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    _match_snapshot(_describe(defs), SNAPSHOT)


def _match_snapshot(described: dict, path: Path) -> None:
    if os.environ.get("OSSA_UPDATE_SNAPSHOTS"):
        path.write_text(json.dumps(described, indent=2, sort_keys=True) + "\n")
    # a missing snapshot is a failure, not a licence to write one: CI would pass on anything
    assert path.exists(), f"{path} is missing; write it with OSSA_UPDATE_SNAPSHOTS=1 and review it"
    assert described == json.loads(path.read_text())


def test_a_missing_snapshot_fails(tmp_path, monkeypatch):
    import pytest

    monkeypatch.delenv("OSSA_UPDATE_SNAPSHOTS", raising=False)
    with pytest.raises(AssertionError, match="is missing"):
        _match_snapshot({"assets": {}}, tmp_path / "definitions.json")
    assert not (tmp_path / "definitions.json").exists()


def test_every_asset_has_a_code_version_from_its_stage_module():
    from importlib.metadata import version

    from ossa_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    versions = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}
    assert all(v and v.startswith(version("ossa") + "+") for v in versions.values()), versions
    # one module, one version: the finetune stage's assets share theirs, other stages differ
    assert versions["finetune/base_model"] == versions["finetune/domain_checkpoint"]
    assert versions["finetune/base_model"] != versions["lora/multitask_adapter"]


def test_every_asset_has_a_docstring_kinds_and_owner():
    from ossa_assets.definitions import defs

    for a in defs.assets:
        for spec in a.specs:
            key = spec.key.to_user_string()
            assert spec.description, f"{key} has no description"
            assert len(spec.kinds) in (1, 2, 3), f"{key} kinds {spec.kinds}"
            assert spec.owners, f"{key} has no owner"
            assert len(spec.key.path) == 2, f"{key}: keys are [stage, artifact]"


def test_workspace_and_dg_target_agree():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = pyproject["tool"]["dg"]["project"]["code_location_target_module"]
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    modules = [e["python_module"]["module_name"] for e in workspace["load_from"]]
    assert modules == [target] == ["ossa_assets.definitions"]


def test_definitions_load_without_heavy_imports():
    """Heavy ML libraries are imported inside asset bodies, so definitions load fast."""
    code = (
        "import sys, ossa_assets.definitions; "
        "print(','.join(m for m in ('torch','transformers','peft','sentence_transformers','mlflow',"
        "'onnxruntime','datasets','qdrant_client') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"definitions imported heavy modules: {out.stdout.strip()}"


def test_profiles_override_defaults_and_reject_unknown_fields(monkeypatch):
    import pytest

    from ossa_assets import configs
    from ossa_assets.finetune.config import FinetuneConfigBase

    tiny = configs.profiled(FinetuneConfigBase, "domain_checkpoint", profile="tiny")
    assert tiny().max_steps == configs.load_profile("tiny")["domain_checkpoint"]["max_steps"]
    assert FinetuneConfigBase().max_steps == 1000  # the class default is production's
    assert tiny(max_steps=7).max_steps == 7  # a run can still override

    monkeypatch.setattr(configs, "load_profile", lambda name: {"s": {"nope": 1}})
    with pytest.raises(ValueError, match="unknown fields"):
        configs.profiled(FinetuneConfigBase, "s", profile="any")
    monkeypatch.setattr(configs, "load_profile", lambda name: {"s": {"max_steps": "many"}})
    with pytest.raises(ValueError):
        configs.profiled(FinetuneConfigBase, "s", profile="any")


def test_config_cross_field_rules():
    import pytest
    from pydantic import ValidationError

    from ossa_assets.finetune.config import BaseModelConfigBase
    from ossa_assets.lora.config import AdapterConfigBase

    with pytest.raises(ValidationError, match="divisible"):
        BaseModelConfigBase(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValidationError, match="target_modules"):
        AdapterConfigBase(target_modules=[])
    assert AdapterConfigBase().r == 64 and AdapterConfigBase().alpha == 128
    assert AdapterConfigBase().target_modules == ["q_proj", "v_proj", "gate_proj"]


def test_resources_and_sensors_packages_resolve_inside_the_repo():
    import resources
    import sensors

    for mod in (resources, sensors):
        assert Path(mod.__file__).resolve().is_relative_to(ROOT), mod.__file__
