"""Request and response bodies: what /openapi.json documents and what the handlers validate."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, Field


def _json_int(v):
    """JSON Schema's integer: 8 and 8.0, never true or "8" (pydantic's lax mode would coerce)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("must be an integer")
    if isinstance(v, float) and not v.is_integer():
        raise ValueError("must be an integer")
    return int(v)


def _json_number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("must be a number")
    return v


JsonInt = Annotated[int, BeforeValidator(_json_int)]
JsonFloat = Annotated[float, BeforeValidator(_json_number)]

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
    max_new_tokens: JsonInt = Field(default=32, ge=1, le=MAX_NEW_TOKENS)
    temperature: JsonFloat = Field(default=0.0, ge=0.0, le=2.0, description="0: greedy decoding.")
    top_p: JsonFloat = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling (temperature > 0).")
    seed: Optional[Annotated[int, Field(ge=0, le=2**32 - 1), BeforeValidator(_json_int)]] = Field(default=None,
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
    variant: str = Field(description="The release variant that answered (its versioned name)")
    variant_role: Literal["champion", "challenger", "deployed"] = Field(
        description="champion or challenger of the route's release; deployed: no release store")
    release: Optional[str] = Field(description="The release served, serving/release[<route>]@<version>")


class FeedbackRequest(BaseModel):
    model_config = {"extra": "forbid"}

    request_id: str = Field(min_length=1, max_length=64, description="The request_id of a generation answer")
    rating: Literal["good", "bad"]
    comment: Optional[str] = Field(default=None, max_length=2000)


class FeedbackResponse(BaseModel):
    recorded: bool
    request_id: str
    route: str
    variant: str
    variant_role: str


class SearchRequest(BaseModel):
    model_config = {"extra": "forbid"}

    query: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    limit: JsonInt = Field(default=5, ge=1, le=50)
    index: Literal["docs", "code", "capability"] = Field(
        default="docs", description="docs: every curated document; code: specs, NodeSets, pipelines; "
        "capability: operations, OPC UA methods and CI jobs an agent can call.")
    domain: Optional[str] = Field(default=None, max_length=100)
    source: Optional[str] = Field(default=None, max_length=200)


# the largest valid body (64 x 2000 characters, JSON-escaped) fits under the server's body limit
MAX_EMBED_INPUTS = 64
MAX_EMBED_CHARS = 2000  # the embedders read 128 tokens (~500 characters) of each
Text = Annotated[str, Field(min_length=1, max_length=MAX_EMBED_CHARS)]


class EmbeddingsRequest(BaseModel):
    """OpenAI's shape: `input` one string or a list, `model` one of the trained embedding models."""

    model_config = {"extra": "forbid"}

    input: Union[Text, Annotated[list[Text], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]] = Field(
        description=f"A string or up to {MAX_EMBED_INPUTS} strings.")
    model: Literal["code", "docs", "capability"]
    dimensions: Optional[Annotated[int, Field(ge=1, le=4096), BeforeValidator(_json_int)]] = Field(default=None,
                                      description="A Matryoshka prefix of the vector, re-normalized; "
                                      "a value at or above the model's width returns the whole vector "
                                      "(the answer's `dimensions` says how many).")
    encoding_format: Literal["float"] = "float"
