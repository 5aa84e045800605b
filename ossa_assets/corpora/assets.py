"""Corpora stage.

Inputs: the configured sources (`CorpusSources`: configs/sources.yaml or OSSA_SOURCES; local
directories, git repositories, Hugging Face datasets on disk, JSONL/Parquet, fsspec URLs).
Outputs under `<data root>/artifacts/corpora/...`:
- `corpora/source_documents[domain|source]`: one source curated file by file — parsed safely,
  validated by its domain's rules, split into units, secrets scrubbed, filtered, exact-deduplicated —
  as `documents.jsonl.gz` + `quarantine.jsonl` (every rejected file with its reason) +
  `summary.json`. Incremental: per-file outcomes are cached by content hash, dependencies and
  curation settings under `<data root>/cache/curation/`.
- `corpora/curated_corpus[domain]`: the domain's sources merged — exact and near duplicates
  removed across sources, split train/validation/test by content hash — as `datasets`
  DatasetDicts `documents/` and `units/` (schema in ossa_assets/lib/curation/corpus.py), plus
  `quarantine.jsonl.gz`, `report.json` and `size_histogram.svg`. Gates: enough valid
  documents, invalid rate, duplicate rate (blocking).
"""

from __future__ import annotations

import hashlib
import json
import time

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset, gate
from ossa_assets.corpora.config import CuratedCorpusConfig, SourceCurationConfig
from ossa_assets.corpora.partitions import domain_partitions, domain_source_partitions
from ossa_assets.keys import CURATED_CORPUS, SOURCE_DOCUMENTS
from ossa_assets.lib.artifacts import Artifact, publish_dir, sha256_json, staging_dir
from ossa_assets.lib.curation import corpus as corpus_lib
from ossa_assets.lib.curation import pipeline
from ossa_assets.lib.curation.common import Limits
from ossa_assets.lib.curation.sources import list_files, manifest_licenses
from resources.corpus import CorpusSources
from resources.storage import ArtifactStore


@artifact_asset(
    kind="SourceSnapshot",
    key=SOURCE_DOCUMENTS,
    partitions_def=domain_source_partitions,
    group_name="corpora",
    kinds={"python"},
    owners=["team:data"],
)
def source_documents(
    context: dg.AssetExecutionContext,
    config: SourceCurationConfig,  # type: ignore[valid-type]
    corpus: CorpusSources,
    store: ArtifactStore,
) -> StageResult:
    """One source's curated documents and quarantine (cached per file: only changes are re-curated)."""
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    domain, source = keys["domain"], keys["source"]
    spec = next((s for s in corpus.specs() if s.name == source), None)
    if spec is None or spec.domain != domain:
        # the (domain x source) grid has cells for other domains' sources: a clear no-op
        why = "not configured" if spec is None else f"a source of {spec.domain}"
        return StageResult(
            Artifact(kind="SourceSnapshot", path="", data_version=f"none-{domain}-{source}",
                     meta={"domain": domain, "source": source, "documents": 0}),
            metadata={"outcome": f"no-op: {source} is {why}, not of {domain}", "documents": 0},
        )
    settings = pipeline.CurationSettings(
        limits=Limits(max_bytes=config.max_document_bytes, max_depth=config.max_depth,
                      max_yaml_nodes=config.max_yaml_nodes, max_units=config.max_units),
        min_bytes=config.min_bytes,
        prose_languages=tuple(config.prose_languages),
    )
    t0 = time.perf_counter()
    files = list_files(spec, store.path("cache", "git"))
    licenses = manifest_licenses(spec, None)
    result = pipeline.curate_source(
        spec, files, store.path("cache", "curation"), settings, licenses, log=context.log.info
    )
    seconds = time.perf_counter() - t0
    version = sha256_json({
        "settings": settings.key(),
        # a bundled spec's text changes with its fragments while its doc_id (its own bytes) stays;
        # an arrival changes when the file arrives again: either is a new snapshot
        "docs": [(d.doc_id, d.path, hashlib.sha256(d.text.encode()).hexdigest(), d.arrived) for d in result.documents],
        "quarantine": [(q.path, q.reason) for q in result.quarantined],
        "fragments": result.fragments,
    })
    parent = store.dir_for(context.asset_key, f"{domain}.{source}")
    final = parent / version[:16]
    if not final.exists():
        with staging_dir(parent) as tmp:
            pipeline.save_source_result(result, tmp)
            publish_dir(tmp, final)
    for q in result.quarantined[:50]:
        context.log.info(f"quarantined {q.path}: {q.reason} {q.detail}")
    reasons: dict[str, int] = {}
    for q in result.quarantined:
        reasons[q.reason] = reasons.get(q.reason, 0) + 1
    return StageResult(
        Artifact(
            kind="SourceSnapshot",
            path=str(final),
            data_version=version,
            meta={"domain": domain, "source": source, "kind": spec.kind, "documents": len(result.documents)},
        ),
        metadata={
            "source_kind": spec.kind,
            "files": result.files_seen,
            "documents": len(result.documents),
            "fragments": len(result.fragments),
            "quarantined": len(result.quarantined),
            "quarantine_reasons": dg.JsonMetadataValue(dict(sorted(reasons.items()))),
            "curated_now": result.recomputed,
            "from_cache": result.from_cache,
            "seconds": dg.FloatMetadataValue(round(seconds, 2)),
            "files_per_second": dg.FloatMetadataValue(round(result.files_seen / max(seconds, 1e-9), 1)),
            "secrets_redacted": dg.JsonMetadataValue(result.secrets),
        },
    )


@artifact_asset(
    kind="CorpusVersion",
    key=CURATED_CORPUS,
    deps=[dg.AssetDep(SOURCE_DOCUMENTS, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("domain"))],
    partitions_def=domain_partitions,
    group_name="corpora",
    kinds={"python", "huggingface"},
    owners=["team:data"],
    check_specs=[
        gate("enough_valid_documents", CURATED_CORPUS, "Enough curated documents, and enough for validation."),
        gate("invalid_rate_bound", CURATED_CORPUS, "Broken or schema-invalid files stay under the bound."),
        gate("duplicate_rate_bound", CURATED_CORPUS, "Exact and near duplicates stay under the bound."),
    ],
)
def curated_corpus(
    context: dg.AssetExecutionContext,
    config: CuratedCorpusConfig,  # type: ignore[valid-type]
    corpus: CorpusSources,
    store: ArtifactStore,
) -> StageResult:
    """A domain's curated corpus: documents and units (Arrow), train/validation/test, with a quality report."""
    domain = context.partition_key
    specs = corpus.specs_for(domain)
    if not specs:
        raise ValueError(f"no source is configured for domain {domain!r} in {corpus.config_path}")
    snapshots: list[Artifact] = []
    for spec in specs:
        key = dg.MultiPartitionKey({"domain": domain, "source": spec.name})
        art = store.load_manifest(SOURCE_DOCUMENTS, str(key))
        if art is None or not art.path:
            raise FileNotFoundError(
                f"source {spec.name!r} of {domain} has not been curated: materialize "
                f"corpora/source_documents partition {key} first"
            )
        snapshots.append(art)
    results = [pipeline.load_source_result(a.path) for a in snapshots]
    cfg = {k: v for k, v in config.model_dump().items() if k in
           ("validation_fraction", "test_fraction", "near_duplicate_threshold")}
    result = corpus_lib.assemble(
        domain,
        results,
        validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction,
        near_dup_threshold=config.near_duplicate_threshold,
        config={**cfg, "sources": [(a.partition, a.data_version) for a in snapshots]},
        signature_cache=store.path("cache", "minhash"),
    )
    version = result.data_version
    parent = store.dir_for(context.asset_key, domain)
    final = parent / version[:16]
    if not final.exists():
        with staging_dir(parent) as tmp:
            corpus_lib.save_corpus(result, tmp)
            publish_dir(tmp, final)
    rep = result.report
    n_val = rep["documents_per_split"]["validation"]
    checks = [
        dg.AssetCheckResult(
            check_name="enough_valid_documents",
            passed=rep["documents"] >= config.min_valid_documents and n_val >= config.min_validation_documents,
            description=f"{rep['documents']} documents (min {config.min_valid_documents}), "
            f"{n_val} for validation (min {config.min_validation_documents})",
            metadata={"documents": rep["documents"], "validation": n_val},
        ),
        dg.AssetCheckResult(
            check_name="invalid_rate_bound",
            passed=rep["invalid_rate"] <= config.max_invalid_rate,
            description=f"invalid rate {rep['invalid_rate']:.3f} (max {config.max_invalid_rate})",
            metadata={"invalid": rep["invalid"], "invalid_rate": rep["invalid_rate"]},
        ),
        dg.AssetCheckResult(
            check_name="duplicate_rate_bound",
            passed=rep["duplicate_rate"] <= config.max_duplicate_rate,
            description=f"duplicate rate {rep['duplicate_rate']:.3f} (max {config.max_duplicate_rate})",
            metadata={"exact": rep["exact_duplicates"], "near": rep["near_duplicates"],
                      "duplicate_rate": rep["duplicate_rate"]},
        ),
    ]
    return StageResult(
        Artifact(
            kind="CorpusVersion",
            path=str(final),
            data_version=version,
            derived_from=[a.lineage_id for a in snapshots],
            meta={"domain": domain, "documents": rep["documents"], "sources": [s.name for s in specs],
                  # the split rule, for readers that split documents not merged yet (the hourly adapter)
                  "validation_fraction": config.validation_fraction, "test_fraction": config.test_fraction},
        ),
        metadata={
            "documents": rep["documents"],
            "files_seen": rep["files_seen"],
            "fragments": rep["fragments"],
            "quarantined": rep["quarantined"],
            "invalid": rep["invalid"],
            "invalid_rate": dg.FloatMetadataValue(round(rep["invalid_rate"], 4)),
            "exact_duplicates": rep["exact_duplicates"],
            "near_duplicates": rep["near_duplicates"],
            "duplicate_rate": dg.FloatMetadataValue(round(rep["duplicate_rate"], 4)),
            "quarantine_reasons": dg.JsonMetadataValue(rep["reasons"]),
            "documents_per_split": dg.JsonMetadataValue(rep["documents_per_split"]),
            "tokens_per_split": dg.JsonMetadataValue(rep["tokens_per_split"]),
            "units_by_type": dg.JsonMetadataValue(rep["units_by_type"]),
            "secrets_redacted": dg.JsonMetadataValue(rep["secrets_redacted"]),
            "licenses": dg.JsonMetadataValue(rep["licenses"]),
            "size_histogram": dg.MarkdownMetadataValue(corpus_lib.histogram_markdown(rep["size_histogram"])),
            "size_histogram_svg": dg.PathMetadataValue(str(final / "size_histogram.svg")),
            "dagster/row_count": rep["documents"],
            "report": dg.PathMetadataValue(str(final / "report.json")),
            "sources": dg.JsonMetadataValue(json.loads(json.dumps(rep["per_source"]))),
        },
        checks=checks,
    )
