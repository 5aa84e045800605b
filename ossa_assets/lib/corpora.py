"""Corpus curation: discover files, parse them safely, keep the valid ones, quarantine the rest.

Every file a source yields ends up in exactly one of two places: a curated `Document`, or the
quarantine with a machine-readable reason. Nothing is silently dropped, so the counts in the
quality report always add up to the number of files seen.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from ossa_assets.lib.artifacts import sha256_bytes, sha256_json

# Bump when parsing or acceptance rules change: it is part of every corpus data version, so a
# rule change re-curates instead of reusing documents accepted under the old rules.
CURATION_CODE_VERSION = "1"

DOMAINS = ("api_spec", "industrial_protocol", "devops_workflow")

STRUCTURED_YAML = (".yaml", ".yml")
STRUCTURED_JSON = (".json",)
STRUCTURED_XML = (".xml",)
PROSE = (".md", ".rst", ".txt", ".adoc")


# Reasons that mean the file is broken or hostile (counted in the invalid rate). The others
# (duplicate, not_openapi, not_nodeset, not_pipeline, unsupported_format, ...) mean the file is
# fine but not a training document of this domain: quarantined with the reason, not "invalid".
INVALID_REASONS = frozenset(
    {"empty", "binary", "not_utf8", "too_large", "unreadable", "malformed_yaml", "malformed_json",
     "malformed_xml", "unsafe_xml", "not_structured", "too_short"}
)


@dataclass
class Document:
    doc_id: str  # sha256 of the raw bytes: identical files are one document
    domain: str
    source: str  # the configured source root this file came from
    path: str  # path relative to the source root
    format: str  # yaml | json | xml | prose
    text: str
    n_bytes: int
    mtime: float
    split: str = ""


@dataclass
class Quarantined:
    source: str
    path: str
    reason: str  # short code: empty, binary, not_utf8, too_large, malformed_yaml, ...
    detail: str = ""


@dataclass
class CurationResult:
    documents: list[Document] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: int = 0
    files_seen: int = 0

    @property
    def invalid(self) -> int:
        return sum(q.reason in INVALID_REASONS for q in self.quarantined)

    def reason_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for q in self.quarantined:
            counts[q.reason] = counts.get(q.reason, 0) + 1
        return dict(sorted(counts.items()))


class _CIYamlLoader(yaml.SafeLoader):
    """SafeLoader that understands GitLab's `!reference [job, key]` instead of rejecting it.

    Any other tag still fails: unknown language-specific tags (`!!python/object`) are a
    reason to quarantine, never something to construct.
    """


def _reference(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return {"!reference": loader.construct_sequence(node, deep=True)}


_CIYamlLoader.add_constructor("!reference", _reference)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:300]


def walk_files(root: Path) -> Iterator[Path]:
    """All regular files under root, dot-folders included (`.github/workflows`, `.gitlab-ci.yml`).

    Symlinks are not followed: a link could point outside the source root.
    """
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p


def parse_document(raw: bytes, suffix: str, domain: str, max_bytes: int) -> tuple[str, str]:
    """Return (format, text) for an acceptable file, else raise Rejected with a reason."""
    if len(raw) == 0 or not raw.strip():
        raise Rejected("empty")
    if len(raw) > max_bytes:
        raise Rejected("too_large", f"{len(raw)} bytes > {max_bytes}")
    if b"\0" in raw[:8192]:
        raise Rejected("binary", "NUL byte in the first 8 KiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Rejected("not_utf8", str(e)) from None
    text = text.replace("\r\n", "\n")
    suffix = suffix.lower()

    if suffix in STRUCTURED_YAML:
        try:
            obj = list(yaml.load_all(text, Loader=_CIYamlLoader))  # noqa: S506 - safe subclass
        except yaml.YAMLError as e:
            raise Rejected("malformed_yaml", str(e).splitlines()[0] if str(e) else "") from None
        obj = obj[0] if len(obj) == 1 else obj
        _check_structure(obj, domain, "yaml")
        return "yaml", text
    if suffix in STRUCTURED_JSON:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise Rejected("malformed_json", str(e)) from None
        _check_structure(obj, domain, "json")
        return "json", text
    if suffix in STRUCTURED_XML:
        import defusedxml.ElementTree as ET  # forbids DTDs, entity expansion, external entities
        from defusedxml import DefusedXmlException

        try:
            root = ET.fromstring(raw)
        except DefusedXmlException as e:
            raise Rejected("unsafe_xml", type(e).__name__) from None
        except ET.ParseError as e:
            raise Rejected("malformed_xml", str(e)) from None
        if domain == "industrial_protocol" and _local(root.tag) not in ("UANodeSet", "schema"):
            raise Rejected("not_nodeset", f"root element <{_local(root.tag)}>")
        return "xml", text
    if suffix in PROSE:
        if len(text.split()) < 5:
            raise Rejected("too_short", "fewer than 5 words")
        return "prose", text
    raise Rejected("unsupported_format", suffix or "(no extension)")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _check_structure(obj: Any, domain: str, fmt: str) -> None:
    """Domain-level sanity: structured documents must look like what the domain trains on."""
    if not isinstance(obj, (dict, list)) or not obj:
        raise Rejected("not_structured", f"top level {fmt} value is {type(obj).__name__}")
    if domain == "api_spec":
        if not (isinstance(obj, dict) and ("openapi" in obj or "swagger" in obj)):
            raise Rejected("not_openapi", "no top-level 'openapi' or 'swagger' key")
    elif domain == "devops_workflow":
        if not isinstance(obj, dict):
            raise Rejected("not_pipeline", "a pipeline definition is a mapping")


def split_for(doc_id: str, val_fraction: float) -> str:
    """Deterministic split from the content hash alone: adding documents never moves another."""
    bucket = int(doc_id[:8], 16) % 10_000
    return "validation" if bucket < val_fraction * 10_000 else "train"


def curate(
    sources: dict[str, Path],
    domain: str,
    *,
    max_bytes: int,
    val_fraction: float,
) -> CurationResult:
    """Curate all files of the given sources (name -> root directory) for one domain."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    result = CurationResult()
    seen: set[str] = set()
    for source_name, root in sorted(sources.items()):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"corpus source {source_name!r}: {root} is not a directory")
        for p in walk_files(root):
            result.files_seen += 1
            rel = str(p.relative_to(root))
            try:
                size = p.stat().st_size
                if size > max_bytes:  # never read a huge file into memory just to reject it
                    raise Rejected("too_large", f"{size} bytes > {max_bytes}")
                raw = p.read_bytes()
                fmt, text = parse_document(raw, p.suffix, domain, max_bytes)
            except Rejected as r:
                result.quarantined.append(Quarantined(source_name, rel, r.reason, r.detail))
                continue
            except OSError as e:
                result.quarantined.append(Quarantined(source_name, rel, "unreadable", str(e)))
                continue
            doc_id = sha256_bytes(raw)
            if doc_id in seen:
                result.duplicates += 1
                result.quarantined.append(Quarantined(source_name, rel, "duplicate", doc_id[:16]))
                continue
            seen.add(doc_id)
            result.documents.append(
                Document(
                    doc_id=doc_id,
                    domain=domain,
                    source=source_name,
                    path=rel,
                    format=fmt,
                    text=text,
                    n_bytes=len(raw),
                    mtime=p.stat().st_mtime,
                    split=split_for(doc_id, val_fraction),
                )
            )
    return result


def corpus_data_version(result: CurationResult, config: dict[str, Any]) -> str:
    """Hash of what was accepted (by content) and how: the corpus's identity."""
    return sha256_json(
        {
            "code": CURATION_CODE_VERSION,
            "config": config,
            "docs": sorted((d.doc_id, d.split) for d in result.documents),
        }
    )


def save_curated(result: CurationResult, out_dir: Path, report: dict[str, Any]) -> None:
    """Write the curated corpus as a `datasets.DatasetDict` (Arrow) plus quarantine and report."""
    from datasets import Dataset, DatasetDict

    out_dir = Path(out_dir)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    for d in sorted(result.documents, key=lambda d: d.doc_id):
        splits[d.split].append(asdict(d))
    features = None
    dd = {}
    for name, rows in splits.items():
        if rows:
            dd[name] = Dataset.from_list(rows)
            features = dd[name].features
    for name, rows in splits.items():
        if not rows and features is not None:
            dd[name] = Dataset.from_dict({k: [] for k in features}, features=features)
    if dd:
        DatasetDict(dd).save_to_disk(str(out_dir / "dataset"))
    with open(out_dir / "quarantine.jsonl", "w", encoding="utf-8") as f:
        for q in result.quarantined:
            f.write(json.dumps(asdict(q), sort_keys=True) + "\n")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))


def load_split_texts(corpus_dir: Path, split: str) -> list[dict[str, Any]]:
    """Rows of one split of a curated corpus, as dicts (doc_id, text, ...)."""
    from datasets import load_from_disk

    path = Path(corpus_dir) / "dataset"
    if not path.exists():
        return []
    dd = load_from_disk(str(path))
    if split not in dd:
        return []
    return [dict(r) for r in dd[split]]
