from __future__ import annotations

import dagster as dg
from pydantic import Field, model_validator

from ossa_assets.configs import profiled


class CuratedCorpusConfigBase(dg.Config):
    """How a domain's raw documents become a curated corpus."""

    max_document_bytes: int = Field(
        default=50_000_000,
        description="Files larger than this are quarantined as too_large without being read.",
    )
    validation_fraction: float = Field(
        default=0.1, description="Share of documents (by content hash) held out for validation."
    )
    min_valid_documents: int = Field(
        default=100, description="Blocking check: fewer curated documents stops training."
    )
    min_validation_documents: int = Field(
        default=10, description="Blocking check: fewer validation documents stops training."
    )
    max_invalid_rate: float = Field(
        default=0.5,
        description="Blocking check: broken files (malformed, binary, empty, unsafe...) / files seen "
        "above this stops training; out-of-domain files and duplicates do not count.",
    )

    @model_validator(mode="after")
    def _check(self):
        if not 0 < self.validation_fraction < 1:
            raise ValueError("validation_fraction must be in (0, 1)")
        if not 0 <= self.max_invalid_rate <= 1:
            raise ValueError("max_invalid_rate must be in [0, 1]")
        return self


CuratedCorpusConfig = profiled(CuratedCorpusConfigBase, "curated_corpus")
