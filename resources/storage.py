"""Where artifacts live, and the IO manager that passes artifact descriptions between steps.

Bytes (checkpoints, corpora, ONNX files) are written by the stages under `root`; what travels
between Dagster steps is the small `Artifact` record, stored as a manifest per asset partition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ossa_assets.lib.artifacts import Artifact, atomic_write_text


def _partition_dir(key: dg.AssetKey) -> str:
    return "/".join(key.path)


def manifest_path(root: str | Path, key: dg.AssetKey, partition: str | None) -> Path:
    """Where the IO manager keeps the latest Artifact of an asset (partition)."""
    return Path(root) / "manifests" / _partition_dir(key) / f"{partition or '_'}.json"


class ArtifactStore(dg.ConfigurableResource):
    """The data root: every artifact of every stage is written below it."""

    root: str = Field(description="Directory (or mounted volume) holding all artifacts.")

    def dir_for(self, asset_key: dg.AssetKey, partition: str | None = None) -> Path:
        p = Path(self.root) / "artifacts" / _partition_dir(asset_key) / (partition or "_")
        p.mkdir(parents=True, exist_ok=True)
        return p

    def path(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)

    def load_manifest(self, key: dg.AssetKey, partition: str | None) -> Artifact | None:
        """The latest Artifact of another asset (partition), for stages that choose which
        upstream partitions they read (a domain reads its own sources' snapshots)."""
        p = manifest_path(self.root, key, partition)
        return Artifact.from_json(p.read_text()) if p.exists() else None


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Stores each output `Artifact` as JSON; loads upstream artifacts per partition.

    An unpartitioned asset reading a partitioned one gets `{partition: Artifact}`.
    """

    root: str = Field(description="Same data root as ArtifactStore; manifests live below it.")

    def _manifest(self, key: dg.AssetKey, partition: str | None) -> Path:
        return manifest_path(self.root, key, partition)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        if not isinstance(obj, Artifact):
            raise TypeError(f"{context.asset_key.to_user_string()}: assets here return Artifact, got {type(obj)}")
        partition = None
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            if len(keys) != 1:
                raise ValueError(f"{context.asset_key.to_user_string()}: one partition per run, got {len(keys)}")
            partition = keys[0]
        atomic_write_text(self._manifest(context.asset_key, partition), obj.to_json())

    def _load_one(self, key: dg.AssetKey, partition: str | None) -> Artifact:
        path = self._manifest(key, partition)
        if not path.exists():
            where = f" partition {partition!r}" if partition else ""
            raise FileNotFoundError(
                f"{key.to_user_string()}{where} has not been materialized (no {path})"
            )
        return Artifact.from_json(path.read_text())

    def load_input(self, context: dg.InputContext) -> Any:
        key = context.asset_key
        if not context.has_asset_partitions:
            return self._load_one(key, None)
        keys = list(context.asset_partition_keys)
        # One upstream partition feeding one downstream partition (same domain, or the previous
        # hour) is a single artifact; a fan-in (all domains) is a dict keyed by partition.
        if context.has_partition_key and len(keys) == 1:
            return self._load_one(key, keys[0])
        return {k: self._load_one(key, k) for k in keys}
