"""A domain's corpus from its curated sources: cross-source dedup, splits, dataset, report.

Dataset schema (Arrow, `datasets.DatasetDict` with splits train / validation / test):

`documents/` — one row per curated document
  doc_id (str, sha256 of the original bytes), domain, source, path (relative to the source),
  format (openapi | nodeset | prose | gitlab_ci | github_actions | ...), text (secrets
  scrubbed; a multi-file spec is bundled), n_bytes, n_tokens (words and punctuation),
  license (as the document states it, else the source's; "" if unknown), language ("en",
  "other", "n/a" for structured formats), mtime, arrived (when it reached the source: see pipeline.py), meta (JSON), n_units, secrets_redacted, split.
`units/` — one row per unit of a document (same split as its document)
  unit_id (doc_id:index), doc_id, domain, source, path, unit_type (operation | schema | node |
  job | section), title, text, meta (JSON), split.

Splits come from the document's content hash alone, so a document never changes split when
others are added or removed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ossa_assets.lib.curation import neardup
from ossa_assets.lib.curation.pipeline import (
    CURATION_CODE_VERSION,
    INVALID_REASONS,
    CuratedDoc,
    Quarantined,
    SourceResult,
)

SPLITS = ("train", "validation", "test")


def split_for(doc_id: str, validation: float, test: float) -> str:
    bucket = int(doc_id[:8], 16) % 10_000
    if bucket < test * 10_000:
        return "test"
    if bucket < (test + validation) * 10_000:
        return "validation"
    return "train"


@dataclass
class CorpusResult:
    domain: str
    documents: list[CuratedDoc] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)  # doc_id -> split
    quarantined: list[Quarantined] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    data_version: str = ""


def _signature(doc: CuratedDoc, cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None:
        return neardup.signature(doc.text)
    p = Path(cache_dir) / doc.doc_id[:2] / f"{doc.doc_id}.npy"
    if p.exists():
        try:
            return np.load(p)
        except (OSError, ValueError):
            pass
    sig = neardup.signature(doc.text)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp.npy")
    np.save(tmp, sig)
    tmp.replace(p)
    return sig


def assemble(
    domain: str,
    sources: list[SourceResult],
    *,
    validation_fraction: float,
    test_fraction: float,
    near_dup_threshold: float,
    config: dict[str, Any],
    signature_cache: Path | None = None,
) -> CorpusResult:
    """Merge sources (in priority order): exact and near duplicates across sources removed,
    keeping the first (by source order, then path)."""
    out = CorpusResult(domain)
    kept: dict[str, CuratedDoc] = {}
    exact_dups = 0
    for src in sources:
        out.quarantined.extend(src.quarantined)
        for d in src.documents:
            if d.doc_id in kept:
                exact_dups += 1
                first = kept[d.doc_id]
                out.quarantined.append(Quarantined(d.source, d.path, "duplicate", f"same bytes as {first.source}/{first.path}"))
                continue
            kept[d.doc_id] = d
    order = {d.doc_id: i for i, d in enumerate(kept.values())}
    ids = list(kept)
    groups = neardup.clusters(ids, (_signature(kept[i], signature_cache) for i in ids), near_dup_threshold)
    near_dups = 0
    for group in groups:
        keep = min(group, key=lambda i: order[i])
        for other in group:
            if other == keep:
                continue
            near_dups += 1
            d, k = kept.pop(other), kept[keep]
            out.quarantined.append(Quarantined(d.source, d.path, "near_duplicate", f"similar to {k.source}/{k.path}"))
    out.documents = list(kept.values())
    out.splits = {d.doc_id: split_for(d.doc_id, validation_fraction, test_fraction) for d in out.documents}
    out.data_version = hashlib.sha256(
        json.dumps(
            {
                "code": CURATION_CODE_VERSION,
                "config": config,
                "docs": sorted((d.doc_id, out.splits[d.doc_id], d.source, d.path) for d in out.documents),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    out.report = _report(out, sources, exact_dups, near_dups)
    return out


def _report(out: CorpusResult, sources: list[SourceResult], exact: int, near: int) -> dict[str, Any]:
    files_seen = sum(s.files_seen for s in sources)
    reasons = Counter(q.reason for q in out.quarantined)
    invalid = sum(n for r, n in reasons.items() if r in INVALID_REASONS)
    fragments = sum(len(s.fragments) for s in sources)
    secrets: Counter[str] = Counter()
    for s in sources:
        secrets.update(s.secrets)
    tokens = Counter()
    docs_per_split = Counter()
    units = Counter()
    for d in out.documents:
        sp = out.splits[d.doc_id]
        tokens[sp] += d.n_tokens
        docs_per_split[sp] += 1
        units.update(u["unit_type"] for u in d.units)
    # within-source duplicates were quarantined by the source; cross-source ones (`exact`) here:
    # both carry the reason "duplicate"
    exact_total = reasons.get("duplicate", 0)
    return {
        "domain": out.domain,
        "files_seen": files_seen,
        "documents": len(out.documents),
        "fragments": fragments,
        "quarantined": len(out.quarantined),
        "invalid": invalid,
        "invalid_rate": invalid / max(files_seen, 1),
        "exact_duplicates": exact_total,
        "cross_source_duplicates": exact,
        "near_duplicates": near,
        "duplicate_rate": (exact_total + near) / max(len(out.documents) + exact_total + near, 1),
        "reasons": dict(sorted(reasons.items())),
        "documents_per_split": {s: docs_per_split.get(s, 0) for s in SPLITS},
        "tokens_per_split": {s: tokens.get(s, 0) for s in SPLITS},
        "units_by_type": dict(sorted(units.items())),
        "secrets_redacted": dict(sorted(secrets.items())),
        "licenses": dict(Counter(d.license or "unknown" for d in out.documents).most_common(12)),
        "formats": dict(sorted(Counter(d.format for d in out.documents).items())),
        "per_source": {
            s.source: {"files": s.files_seen, "documents": len(s.documents), "fragments": len(s.fragments),
                       "quarantined": len(s.quarantined), "curated_now": s.recomputed, "from_cache": s.from_cache}
            for s in sources
        },
        "size_histogram": size_histogram([d.n_bytes for d in out.documents]),
    }


def size_histogram(sizes: list[int]) -> list[dict[str, Any]]:
    """Document counts in power-of-4 byte buckets (256 B .. 64 MB)."""
    edges = [0] + [4**k for k in range(4, 14)]
    counts = [0] * len(edges)
    for s in sizes:
        i = max(j for j, e in enumerate(edges) if s >= e)
        counts[i] += 1
    return [{"from_bytes": edges[i], "documents": c} for i, c in enumerate(counts)]


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:g} {unit}"
        n //= 1024
    return f"{n} TB"


def histogram_markdown(hist: list[dict[str, Any]]) -> str:
    peak = max((h["documents"] for h in hist), default=1) or 1
    lines = ["| size from | documents | |", "|---:|---:|:---|"]
    for h in hist:
        bar = "█" * round(30 * h["documents"] / peak)
        lines.append(f"| {_human(h['from_bytes'])} | {h['documents']} | {bar} |")
    return "\n".join(lines)


def histogram_svg(hist: list[dict[str, Any]], title: str) -> str:
    """The size histogram as a standalone SVG picture (no plotting library needed)."""
    w, h, pad = 640, 280, 40
    peak = max((b["documents"] for b in hist), default=1) or 1
    bw = (w - 2 * pad) / max(len(hist), 1)
    bars = []
    for i, b in enumerate(hist):
        bh = (h - 2 * pad) * b["documents"] / peak
        x, y = pad + i * bw, h - pad - bh
        bars.append(
            f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{bw - 4:.1f}" height="{bh:.1f}" fill="#4c78a8"/>'
            f'<text x="{x + bw / 2:.1f}" y="{h - pad + 14}" font-size="9" text-anchor="middle">{_human(b["from_bytes"])}</text>'
            f'<text x="{x + bw / 2:.1f}" y="{y - 3:.1f}" font-size="9" text-anchor="middle">{b["documents"]}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">'
        f'<text x="{w / 2}" y="20" font-size="13" text-anchor="middle">{title}</text>'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#333"/>' + "".join(bars) + "</svg>"
    )


def save_corpus(result: CorpusResult, out_dir: Path) -> None:
    """Write the documents and units DatasetDicts, the quarantine list, report and histogram."""
    from datasets import Dataset, DatasetDict, Features, Value

    out_dir = Path(out_dir)
    doc_features = Features({
        "doc_id": Value("string"), "domain": Value("string"), "source": Value("string"),
        "path": Value("string"), "format": Value("string"), "text": Value("string"),
        "n_bytes": Value("int64"), "n_tokens": Value("int64"), "license": Value("string"),
        "language": Value("string"), "mtime": Value("float64"), "arrived": Value("float64"), "meta": Value("string"),
        "n_units": Value("int64"), "secrets_redacted": Value("int64"), "split": Value("string"),
    })
    unit_features = Features({
        "unit_id": Value("string"), "doc_id": Value("string"), "domain": Value("string"),
        "source": Value("string"), "path": Value("string"), "unit_type": Value("string"),
        "title": Value("string"), "text": Value("string"), "meta": Value("string"), "split": Value("string"),
    })
    docs: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    units: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    names = [f.name for f in fields(CuratedDoc) if f.name != "units"]
    for d in sorted(result.documents, key=lambda d: d.doc_id):
        sp = result.splits[d.doc_id]
        # a shallow row: asdict() would deep-copy every unit only to drop them (0.4 s of a re-curation)
        row = {k: getattr(d, k) for k in names}
        docs[sp].append({**row, "n_units": len(d.units), "split": sp})
        for i, u in enumerate(d.units):
            units[sp].append({"unit_id": f"{d.doc_id}:{i}", "doc_id": d.doc_id, "domain": d.domain,
                              "source": d.source, "path": d.path, **u, "split": sp})

    def to_dd(rows: dict[str, list[dict[str, Any]]], features: Features) -> DatasetDict:
        # columns straight into an Arrow table of the schema: 5x faster than Dataset.from_list,
        # which re-encodes every value of these plain string/number columns
        import pyarrow as pa
        from datasets.info import DatasetInfo
        from datasets.table import InMemoryTable

        def one(r: list[dict[str, Any]]) -> Dataset:
            table = pa.Table.from_pydict({k: [x[k] for x in r] for k in features}, schema=features.arrow_schema)
            return Dataset(InMemoryTable(table), info=DatasetInfo(features=features))

        return DatasetDict({s: one(r) for s, r in rows.items()})

    # one shard per split at least: datasets saves an empty split as zero shards, which
    # load_from_disk then cannot read back
    one_shard = {s: 1 for s in SPLITS}
    to_dd(docs, doc_features).save_to_disk(str(out_dir / "documents"), num_shards=one_shard)
    to_dd(units, unit_features).save_to_disk(str(out_dir / "units"), num_shards=one_shard)
    with gzip.open(out_dir / "quarantine.jsonl.gz", "wt", encoding="utf-8") as f:
        for q in sorted(result.quarantined, key=lambda q: (q.source, q.path)):
            f.write(json.dumps(asdict(q), sort_keys=True) + "\n")
    (out_dir / "report.json").write_text(json.dumps({**result.report, "data_version": result.data_version},
                                                    indent=2, sort_keys=True))
    (out_dir / "size_histogram.svg").write_text(
        histogram_svg(result.report["size_histogram"], f"{result.domain}: documents by size")
    )


def load_split_texts(corpus_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """Rows of one split of a curated corpus's documents, as dicts."""
    from datasets import load_from_disk

    path = Path(corpus_dir) / "documents"
    if not path.exists():
        return []
    dd = load_from_disk(str(path))
    return [dict(r) for r in dd[split]] if split in dd else []


def load_units(corpus_dir: str | Path, split: str) -> list[dict[str, Any]]:
    from datasets import load_from_disk

    path = Path(corpus_dir) / "units"
    if not path.exists():
        return []
    dd = load_from_disk(str(path))
    return [dict(r) for r in dd[split]] if split in dd else []


DOCUMENT_FIELDS = ("doc_id", "domain", "source", "path", "format", "license", "split", "n_bytes")


def document_rows(corpus_dir: str | Path) -> list[dict[str, Any]]:
    """Every document of a curated corpus (all splits) without its text: what the lineage graph
    records per document. Reads only these columns of the Arrow files."""
    from datasets import load_from_disk

    path = Path(corpus_dir) / "documents"
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    for split, ds in load_from_disk(str(path)).items():
        cols = [c for c in DOCUMENT_FIELDS if c in ds.column_names]
        rows.extend(ds.select_columns(cols).to_list())
    return rows
