"""Corpora stage.

Inputs: the configured corpus sources of a domain (`CorpusSources`: a directory per domain).
Output: `corpora/curated_corpus[domain]`, a `datasets.DatasetDict` (train/validation, Arrow) of
curated documents plus `quarantine.jsonl` (every rejected file with its reason) and
`report.json`, stored under `<data root>/artifacts/corpora/curated_corpus/<domain>/<version>/`.
Gate: a blocking check on valid-document counts and the invalid rate.
"""

from __future__ import annotations

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset, gate
from ossa_assets.corpora.config import CuratedCorpusConfig
from ossa_assets.corpora.partitions import domain_partitions
from ossa_assets.keys import CURATED_CORPUS
from ossa_assets.lib import corpora as lib
from ossa_assets.lib.artifacts import Artifact, publish_dir, staging_dir
from resources.corpus import CorpusSources
from resources.storage import ArtifactStore


@artifact_asset(
    kind="CorpusVersion",
    key=CURATED_CORPUS,
    partitions_def=domain_partitions,
    group_name="corpora",
    kinds={"python", "huggingface"},
    owners=["team:data"],
    check_specs=[
        gate(
            "enough_valid_documents",
            CURATED_CORPUS,
            "Enough curated (and validation) documents, and an invalid rate under the bound.",
        )
    ],
)
def curated_corpus(
    context: dg.AssetExecutionContext,
    config: CuratedCorpusConfig,  # type: ignore[valid-type]
    corpus: CorpusSources,
    store: ArtifactStore,
) -> StageResult:
    """A domain's curated documents (train/validation Arrow dataset) with a quarantine list."""
    domain = context.partition_key
    sources = corpus.sources_for(domain)
    result = lib.curate(
        sources,
        domain,
        max_bytes=config.max_document_bytes,
        val_fraction=config.validation_fraction,
    )
    curation_cfg = {
        "max_document_bytes": config.max_document_bytes,
        "validation_fraction": config.validation_fraction,
    }
    version = lib.corpus_data_version(result, curation_cfg)
    n_train = sum(d.split == "train" for d in result.documents)
    n_val = len(result.documents) - n_train
    invalid_rate = result.invalid / max(result.files_seen, 1)
    reasons = result.reason_counts()
    report = {
        "domain": domain,
        "sources": {k: str(v) for k, v in sources.items()},
        "files_seen": result.files_seen,
        "curated": len(result.documents),
        "train": n_train,
        "validation": n_val,
        "duplicates": result.duplicates,
        "quarantined": len(result.quarantined),
        "quarantine_reasons": reasons,
        "bytes": sum(d.n_bytes for d in result.documents),
        "data_version": version,
    }
    parent = store.dir_for(context.asset_key, domain)
    final = parent / version[:16]
    if not final.exists():  # same version = same documents and config: already on disk
        with staging_dir(parent) as tmp:
            lib.save_curated(result, tmp, report)
            publish_dir(tmp, final)
    for q in result.quarantined[:20]:
        context.log.info(f"quarantined {q.source}/{q.path}: {q.reason} {q.detail}")

    failures = []
    if len(result.documents) < config.min_valid_documents:
        failures.append(f"{len(result.documents)} curated < {config.min_valid_documents}")
    if n_val < config.min_validation_documents:
        failures.append(f"{n_val} validation documents < {config.min_validation_documents}")
    if invalid_rate > config.max_invalid_rate:
        failures.append(f"invalid rate {invalid_rate:.3f} > {config.max_invalid_rate}")
    check = dg.AssetCheckResult(
        check_name="enough_valid_documents",
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(failures) or "ok",
        metadata={"curated": len(result.documents), "validation": n_val, "invalid_rate": invalid_rate},
    )
    return StageResult(
        Artifact(
            kind="CorpusVersion",
            path=str(final),
            data_version=version,
            meta={
                "domain": domain,
                "documents": len(result.documents),
                "sources": sorted(sources),
            },
        ),
        metadata={
            "files_seen": result.files_seen,
            "documents": len(result.documents),
            "train_documents": n_train,
            "validation_documents": n_val,
            "duplicates": result.duplicates,
            "quarantined": len(result.quarantined),
            "invalid": result.invalid,
            "invalid_rate": dg.FloatMetadataValue(round(invalid_rate, 4)),
            "quarantine_reasons": dg.JsonMetadataValue(reasons),
            "bytes": report["bytes"],
            "dagster/row_count": len(result.documents),
        },
        checks=[check],
    )
