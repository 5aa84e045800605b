"""Request and response bodies: what /openapi.json documents and what the handlers validate."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, Field

MAX_PROMPT_CHARS = 8000
MAX_NEW_TOKENS = 256
INDEXES = ("docs", "code", "capability")


class ErrorBody(BaseModel):
    error: str
    details: Optional[list[str]] = None


class GenerateRequest(BaseModel):
    model_config = {"extra": "forbid"}

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                        description="Text to continue. A prompt longer than the model's context window is "
                        "left-truncated to it (`prompt_truncated` in the answer), never refused.")
    max_new_tokens: int = Field(default=32, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0: greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling (temperature > 0).")
    seed: Optional[int] = Field(default=None, ge=0, le=2**63 - 1,
                                description="Makes sampling repeatable; unset: a fresh seed per request.")
    stop: list[str] = Field(default_factory=list, max_length=4,
                            description="Generation ends before the first of these strings.")


class GenerateResponse(BaseModel):
    route: str
    domain: str
    model_version: str
    lineage_id: str
    completion: str
    finish_reason: Literal["length", "eos", "stop"]
    prompt_tokens: int
    prompt_truncated: bool
    completion_tokens: int
    latency_ms: float
    cached: bool
    request_id: str


class SearchRequest(BaseModel):
    model_config = {"extra": "forbid"}

    query: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    limit: int = Field(default=5, ge=1, le=50)
    index: Literal["docs", "code", "capability"] = Field(
        default="docs", description="docs: every curated document; code: specs, NodeSets, pipelines; "
        "capability: operations, OPC UA methods and CI jobs an agent can call.")
    domain: Optional[str] = Field(default=None, max_length=100)
    source: Optional[str] = Field(default=None, max_length=200)


class EmbeddingsRequest(BaseModel):
    """OpenAI's shape: `input` one string or a list, `model` one of the trained embedding models."""

    model_config = {"extra": "forbid"}

    input: Union[str, list[str]] = Field(description="A string or up to 256 strings.")
    model: Literal["code", "docs", "capability"]
    dimensions: Optional[int] = Field(default=None, ge=1, le=4096,
                                      description="A Matryoshka prefix of the vector, re-normalized; "
                                      "at most the model's dimension.")
    encoding_format: Literal["float"] = "float"
