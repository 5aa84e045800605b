from __future__ import annotations

from typing import Optional

import dagster as dg
from pydantic import Field

from ossa_assets.configs import profiled


class DocumentIndexConfigBase(dg.Config):
    """Embedding curated documents into Qdrant."""

    model_path: Optional[str] = Field(
        default=None,
        description="Local sentence-transformers model; None = the packaged all-MiniLM-L6-v2.",
    )
    max_seq_length: int = Field(default=256, description="Tokens the encoder reads per document.")
    batch_size: int = Field(default=64, description="Encode batch size.")
    alias: str = Field(default="docs-live", description="Alias the serving search route reads.")
    min_self_retrieval: float = Field(
        default=0.9, description="Blocking check: share of sampled documents that find themselves."
    )
    check_sample: int = Field(default=30, description="Documents sampled by the check.")


DocumentIndexConfig = profiled(DocumentIndexConfigBase, "document_index")
