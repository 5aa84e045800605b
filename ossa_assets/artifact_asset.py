"""`artifact_asset`: the one wrapper every stage asset goes through.

A stage body returns an `Artifact` (or a `StageResult` with metadata and check results). The
wrapper fills in what every artifact needs and no stage should write by hand: its asset key and
partition, a stable lineage id, the lineage ids of the artifacts it was computed from (taken from
the body's inputs), and a Dagster data version equal to the artifact's content hash. The
lineage recorder reads all of this back from the event log, so the graph can be rebuilt from
Dagster alone.
"""

from __future__ import annotations

import functools
import inspect
import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import dagster as dg

from ossa_assets.lib.artifacts import Artifact, lineage_id_for

# No asset sets a backfill policy: without one a backfill launches one run per partition tagged
# with that partition (a multi_run(1) policy tags single-partition *ranges*, which IO managers and
# contexts see as "no partition key"; tests/test_hourly_backfill.py found it).
# Data versions are how the artifact's content hash reaches Dagster's staleness tracking.
warnings.filterwarnings("ignore", message=".*data_version.*", category=dg.BetaWarning)
# A domain's corpus depends on exactly its own (domain, source) partitions through this mapping.
warnings.filterwarnings("ignore", message=".*MultiToSingleDimensionPartitionMapping.*", category=dg.BetaWarning)

# Metadata keys the lineage recorder reads (see ossa_assets/lineage/recorder.py).
MD_LINEAGE_ID = "ossa/lineage_id"
MD_KIND = "ossa/kind"
MD_DERIVED_FROM = "ossa/derived_from"
MD_ARTIFACT_META = "ossa/meta"
MD_PATH = "ossa/path"
MD_TRAINED_ON = "ossa/trained_on"  # the inputs a model learned from (a subset of derived_from)
MD_CONFIG = "ossa/config_hash"  # hash of the run's config for this step: a config change, in a diff

# Which inputs a model was *trained on* (TRAINED_ON in the lineage graph) rather than merely
# derived from (a base model, a previous adapter, an evaluation): data kinds feeding model kinds.
MODEL_KINDS = frozenset({"Checkpoint", "Adapter", "EmbeddingModel"})
DATA_KINDS = frozenset({"Dataset", "CorpusVersion", "SourceSnapshot"})
FAILED_GATES = "failed_gates"  # artifact meta: names of the blocking checks it failed


@dataclass
class StageResult:
    artifact: Artifact
    metadata: dict[str, Any] = field(default_factory=dict)
    checks: list[dg.AssetCheckResult] = field(default_factory=list)
    # the artifact's derived_from is complete: an input it was offered but does not contain
    # (a release that refused a candidate engine) is not added to its lineage
    lineage_from_inputs: bool = True


def gate(name: str, asset: dg.AssetKey, description: str) -> dg.AssetCheckSpec:
    """A blocking check evaluated inside the asset: if it fails, nothing downstream runs.

    Unless the active profile lists it as informational (configs/<profile>.yaml,
    `informational_checks`): then it is reported, non-blocking, with the profile's reason in its
    description, because a gate that cannot fail in that profile would pass on nothing.
    """
    from ossa_assets.configs import active_profile_name, informational_checks

    why = informational_checks().get(f"{asset.to_user_string()}:{name}")
    if why:
        return dg.AssetCheckSpec(name, asset=asset, blocking=False,
                                 description=f"{description} Informational in the {active_profile_name()} "
                                             f"profile (not a gate): {why}")
    return dg.AssetCheckSpec(name, asset=asset, blocking=True, description=description)


def blocking_names(specs: Iterable[dg.AssetCheckSpec]) -> frozenset[str]:
    return frozenset(s.name for s in specs if s.blocking)


def single_partition_key(context: dg.AssetExecutionContext) -> str | None:
    """The run's one partition, also when Dagster tags it as a one-partition range."""
    if context.has_partition_key:
        return context.partition_key
    if context.has_partition_key_range:
        r = context.partition_key_range
        if r.start != r.end:
            raise dg.Failure(f"{context.asset_key.to_user_string()} runs one partition per run, "
                             f"got the range {r.start}..{r.end}")
        return r.start
    return None


def _config_hash(context: dg.AssetExecutionContext) -> str:
    from ossa_assets.lib.artifacts import sha256_json

    try:
        cfg = context.op_execution_context.op_config
    except Exception:  # no config schema on this asset
        cfg = None
    return sha256_json(cfg or {})[:16]


def code_version_of(fn: Callable[..., Any]) -> str:
    """The stage's code version for Dagster and the lineage graph: the package version plus a hash
    of the module that defines the stage (its asset bodies and helpers). Library code below it
    is not included: the version says "this stage's code changed", not "nothing else did"."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("ossa")
    except PackageNotFoundError:
        pkg = "0"
    src = inspect.getsource(inspect.getmodule(fn))  # type: ignore[arg-type]
    return f"{pkg}+{hashlib.sha256(src.encode()).hexdigest()[:12]}"


def _input_artifacts(values: Iterable[Any]) -> list[Artifact]:
    found: list[Artifact] = []
    for v in values:
        if isinstance(v, Artifact):
            found.append(v)
        elif isinstance(v, dict):
            found.extend(x for x in v.values() if isinstance(x, Artifact))
    return found


def artifact_asset(*, kind: str, **asset_kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`dg.asset` for stages that produce an `Artifact` of lineage kind `kind`."""

    def decorator(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        blocking = blocking_names(asset_kwargs.get("check_specs") or [])

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any):
            context = next(a for a in args if isinstance(a, dg.AssetExecutionContext))
            inputs = _input_artifacts([*args, *kwargs.values()])
            # A blocking check stops downstream steps of its own run; an artifact that failed
            # its gates must not feed a later run either (a UI launch, a backfill, a sensor).
            blocked = [f"{a.lineage_id} failed {', '.join(a.meta[FAILED_GATES])}"
                       for a in inputs if a.meta.get(FAILED_GATES)]
            if blocked:
                raise dg.Failure(
                    description="inputs failed their blocking checks: " + "; ".join(blocked)
                    + " (fix the input, re-materialize it, then this asset)"
                )
            result = fn(*args, **kwargs)
            if isinstance(result, Artifact):
                result = StageResult(result)
            art = result.artifact
            art.kind = art.kind or kind
            art.asset_key = context.asset_key.to_user_string()
            art.partition = single_partition_key(context)
            trained_on = set(art.meta.pop("trained_on", None) or [])
            if art.kind in MODEL_KINDS:
                trained_on |= {a.lineage_id for a in inputs if a.kind in DATA_KINDS}
            from_inputs = {a.lineage_id for a in inputs} if result.lineage_from_inputs else set()
            art.derived_from = sorted(set(art.derived_from) | from_inputs | trained_on)
            # only blocking checks gate consumers; an informational one is reported, not enforced
            failed = sorted(c.check_name for c in result.checks if not c.passed and c.check_name in blocking)
            if failed:
                art.meta[FAILED_GATES] = failed
            art.lineage_id = lineage_id_for(art.kind, art.asset_key, art.partition, art.data_version)
            metadata = {
                MD_LINEAGE_ID: art.lineage_id,
                MD_KIND: art.kind,
                MD_DERIVED_FROM: json.dumps(art.derived_from),
                MD_ARTIFACT_META: json.dumps(art.meta, sort_keys=True, default=str),
                MD_PATH: art.path,
                MD_TRAINED_ON: json.dumps(sorted(trained_on)),
                MD_CONFIG: _config_hash(context),
                **result.metadata,
            }
            if "mlflow_run_id" in art.meta:
                metadata["mlflow_run_id"] = art.meta["mlflow_run_id"]
            yield dg.Output(art, metadata=metadata, data_version=dg.DataVersion(art.data_version))
            yield from result.checks

        # Dagster type-checks outputs against the return annotation; the body's may be
        # StageResult while the output value is always the Artifact.
        # eval_str: resolve the body module's string annotations here, in its own globals
        wrapped.__signature__ = inspect.signature(fn, eval_str=True).replace(  # type: ignore[attr-defined]
            return_annotation=inspect.Signature.empty
        )
        asset_kwargs.setdefault("code_version", code_version_of(fn))
        return dg.asset(**asset_kwargs)(wrapped)

    return decorator
