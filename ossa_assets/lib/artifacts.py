"""Artifacts: what every stage produces, where it lives, and how it is published.

An `Artifact` is the small, JSON-serialisable description of one stored output (a corpus version,
a checkpoint, an adapter, an ONNX file, a Qdrant collection, a deployment). Stages pass artifacts,
never tensors, between Dagster steps: the bytes stay on disk (or an object store) and the
description travels through the IO manager, the event log and the lineage graph alike.

Publishing is atomic: a stage writes into a fresh temp directory beside the final location and
renames it into place once complete, so a failed or killed run never leaves a half-written
artifact where a downstream step or the serving process could pick it up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

# Bump when the on-disk layout of artifacts changes: it feeds every data version.
LAYOUT_VERSION = "1"


@dataclass
class Artifact:
    """One stored output of a stage."""

    kind: str  # lineage node kind: CorpusVersion, BaseModel, Checkpoint, Adapter, OnnxModel, ...
    path: str  # directory or file where the bytes are, or a URI (qdrant collection, registry)
    data_version: str  # content hash: same bytes and config -> same version
    meta: dict[str, Any] = field(default_factory=dict)  # small facts: mlflow run id, sizes, ...
    derived_from: list[str] = field(default_factory=list)  # lineage ids of the inputs
    asset_key: str = ""  # filled by the asset wrapper from the execution context
    partition: str | None = None
    lineage_id: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Artifact":
        return cls(**json.loads(text))


def lineage_id_for(kind: str, asset_key: str, partition: str | None, data_version: str) -> str:
    """A stable, readable id: the same artifact version always gets the same id."""
    part = f"[{partition}]" if partition else ""
    return f"{asset_key}{part}@{data_version[:16]}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def hash_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """Content hash over files (names relative to `root` and bytes), order-independent."""
    h = hashlib.sha256(LAYOUT_VERSION.encode())
    for p in sorted(Path(p) for p in paths):
        name = str(p.relative_to(root)) if root else p.name
        h.update(name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def hash_dir(path: Path, exclude: tuple[str, ...] = ()) -> str:
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file() and p.name not in exclude]
    return hash_files(files, root=path)


@contextlib.contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A temp directory beside the final location (same filesystem, so rename is atomic).

    Removed on any failure; on success the caller publishes it with `publish_dir`.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        # publish_dir renamed it away on success; anything left is a failed attempt
        if tmp.exists() and tmp.name.startswith(".tmp-"):
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, final: Path) -> Path:
    """Rename a completed staging dir into place.

    Final paths carry the content version, so an existing final dir holds the same bytes: keep
    it (another step may be reading it) and drop the new copy.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if final.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    return final


def publish_versioned(tmp: Path, parent: Path, exclude: tuple[str, ...] = ()) -> tuple[Path, str]:
    """Hash a completed staging dir and publish it as `parent/<version[:16]>`."""
    version = hash_dir(tmp, exclude=exclude)
    return publish_dir(tmp, Path(parent) / version[:16]), version


# the embedded services keep their own files (and temp files) under the data root
_NOT_STAGING = ("qdrant", "mlflow", "graph")


def leftover_staging(root: Path) -> list[Path]:
    """Staging dirs and temp files that a killed process left under the data root."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for top in root.iterdir():
        if top.name in _NOT_STAGING or not top.is_dir():
            continue
        for p in top.rglob(".*"):
            if (p.is_dir() and p.name.startswith(".tmp-")) or (p.is_file() and p.name.endswith(".tmp")):
                if not any(parent.name.startswith(".tmp-") for parent in p.parents):
                    found.append(p)
    return sorted(found)


def sweep_staging(root: Path) -> list[Path]:
    """Remove what `leftover_staging` finds. Only safe while no step is running: a live step's
    staging dir looks the same."""
    removed = leftover_staging(root)
    for p in removed:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
