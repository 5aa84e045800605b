from __future__ import annotations

import dagster as dg
from pydantic import Field, model_validator

from ossa_assets.configs import profiled


class SourceCurationConfigBase(dg.Config):
    """How one source's files become documents: size, nesting and expansion bounds; filters."""

    max_document_bytes: int = Field(
        default=50_000_000, description="Files larger than this are quarantined as too_large, unread."
    )
    max_depth: int = Field(default=64, description="Deepest YAML/JSON/XML nesting accepted.")
    max_yaml_nodes: int = Field(
        default=2_000_000, description="YAML nodes once aliases are expanded (alias-bomb guard)."
    )
    max_units: int = Field(default=5_000, description="Units (operations, nodes, jobs, sections) per document.")
    min_bytes: int = Field(default=16, description="Smaller files are quarantined as too_small.")
    prose_languages: list[str] = Field(
        default=["en"], description="Prose in other languages is quarantined; empty = any language."
    )


class CuratedCorpusConfigBase(dg.Config):
    """How a domain's curated sources become its corpus, and the gates it must pass."""

    validation_fraction: float = Field(
        default=0.1, description="Share of documents (by content hash) held out for validation."
    )
    test_fraction: float = Field(default=0.05, description="Share held out for test.")
    near_duplicate_threshold: float = Field(
        default=0.85, description="Estimated Jaccard similarity (5-word shingles) that makes a near duplicate."
    )
    min_valid_documents: int = Field(
        default=100, description="Blocking check: fewer curated documents stops training."
    )
    min_validation_documents: int = Field(
        default=10, description="Blocking check: fewer validation documents stops training."
    )
    max_invalid_rate: float = Field(
        default=0.25,
        description="Blocking check: broken or schema-invalid files / files seen above this stops "
        "training (out-of-domain files, fragments and duplicates do not count).",
    )
    max_duplicate_rate: float = Field(
        default=0.3, description="Blocking check: exact + near duplicates / candidates above this stops training."
    )

    @model_validator(mode="after")
    def _check(self):
        if not (0 < self.validation_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ValueError("validation_fraction must be in (0, 1) and test_fraction in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 0.5:
            raise ValueError("validation_fraction + test_fraction must leave most documents for training")
        for name in ("max_invalid_rate", "max_duplicate_rate", "near_duplicate_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        return self


SourceCurationConfig = profiled(SourceCurationConfigBase, "source_documents")
CuratedCorpusConfig = profiled(CuratedCorpusConfigBase, "curated_corpus")
