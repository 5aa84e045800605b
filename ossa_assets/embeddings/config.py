from __future__ import annotations

from typing import Optional

import dagster as dg
from pydantic import Field

from ossa_assets.configs import profiled


class EmbeddingPairsConfigBase(dg.Config):
    """Mining anchor/positive pairs from the curated units."""

    max_train_pairs: int = Field(default=0, description="Cap on training pairs (0 = all), sampled by hash.")
    max_eval_pairs: int = Field(default=2000, description="Cap on held-out pairs, sampled by hash.")


class EmbeddingModelConfigBase(dg.Config):
    """Training one embedding model (sentence-transformers trainer, Matryoshka loss)."""

    base_path: Optional[str] = Field(
        default=None,
        description="Local sentence-transformers base model; None = the packaged all-MiniLM-L6-v2.",
    )
    max_seq_length: int = Field(default=256, description="Tokens the encoder reads per text.")
    batch_size: int = Field(default=64, description="Pairs per step: every other positive is a negative.")
    learning_rate: float = Field(default=2e-5)
    epochs: float = Field(default=1.0, description="Passes over the pairs (unless max_steps > 0).")
    max_steps: int = Field(default=-1, description="Steps; -1 = epochs decide.")
    warmup_ratio: float = Field(default=0.1)
    seed: int = Field(default=0)


class EmbeddingEvalConfigBase(dg.Config):
    """Held-out retrieval: the trained model against its base."""

    max_regression: float = Field(
        default=0.0,
        description="Blocking check: trained recall@10 and MRR may trail the base's by at most this, plus "
        "one held-out query's worth (1 / pairs: what the held-out set can resolve).",
    )


class VectorIndexConfigBase(dg.Config):
    """Embedding into a Qdrant collection per model version, and the blue/green alias move."""

    batch_size: int = Field(default=64, description="Encode batch size.")
    recall_queries: int = Field(default=200, description="Held-out anchors asked of the new collection.")
    min_recall_at_10: float = Field(
        default=0.5,
        description="Blocking check: share of held-out anchors whose document (or card) is in the "
        "collection's top 10; below it the live alias stays where it was.",
    )
    max_recall_drop: float = Field(
        default=0.0,
        description="Blocking check: a new model's collection may trail the live one's recall@10 by at "
        "most this plus one anchor's worth (same anchors, each collection with its own model).",
    )
    keep_previous: int = Field(default=1, description="Older collections kept for rollback.")


EmbeddingPairsConfig = profiled(EmbeddingPairsConfigBase, "embedding_pairs")
EmbeddingModelConfig = profiled(EmbeddingModelConfigBase, "embedding_model")
EmbeddingEvalConfig = profiled(EmbeddingEvalConfigBase, "embedding_eval")
VectorIndexConfig = profiled(VectorIndexConfigBase, "vector_index")
