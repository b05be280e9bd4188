"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from xmodal.models.rerank import COSINE_WEIGHT

MIN_SAMPLING_FLOAT = 1e-4  # smallest temperature / top_p: logits divided by it stay finite in float32


class Target(str, Enum):
    images = "images"
    texts = "texts"


class IndexField(BaseModel):
    """Which served index a request reads (or whose model it uses)."""

    index: str | None = Field(
        None,
        description="A served index by name (GET /v1/indexes); optional when one is served (or one is named "
        "default). The `index` query parameter does the same",
    )


class SearchOptions(IndexField):
    """Paging and narrowing, the same for every search."""

    k: int = Field(10, description="How many results (1..max_k)")
    offset: int = Field(0, description="Skip this many best results first (paging: 0, k, 2k, ...; 0..max_offset)")
    min_score: float | None = Field(None, description="Leave out results with a lower cosine similarity")
    filters: dict | None = Field(
        None,
        description='Metadata conditions, all of which must hold: {"width": {"gte": 640}, "license": {"in": ["cc0"]}, '
        '"camera": "X100"}; a value means equality, an object takes in, gt, gte, lt, lte',
    )
    dedup: float | None = Field(
        None,
        description="Near-duplicate removal: drop a result whose stored vector has a cosine >= this (0..1] with a "
        "higher-ranked kept result; more candidates are fetched so that k results come back when possible",
    )


class TextSearchRequest(SearchOptions):
    text: str = Field(description="The query; empty or over-long text is refused")
    decoder_rerank: int | None = Field(
        None,
        description="Re-score the embedding's first N results with the model's decoder (CoCa only): each image "
        "is asked whether it shows the query, and they are sorted by that `match` (0..max_decoder_rerank; "
        "default: the server's decoder_rerank setting)",
    )
    language: str | None = Field(
        None, description="The language the decoder is asked in (default: the query's own; see /v1/vqa)"
    )


class VectorSearchRequest(SearchOptions):
    vector: list[float] = Field(description="A query embedding of the index's dimension; it is L2-normalised here")
    target: Literal["images", "texts"] = "images"


class ImageSearchFields(IndexField):
    """/v1/search/image's fields besides the image (multipart form fields, or JSON next to image_b64)."""

    k: int = Field(10, description="How many results (1..max_k)")
    offset: int = Field(0, description="Skip this many best results first")
    min_score: float | None = Field(None, description="Leave out results with a lower cosine similarity")
    target: Literal["images", "texts"] = Field("images", description="images: similar images; texts: matching captions")
    dedup: float | None = Field(
        None, description="Drop near-duplicates: cosine threshold in (0, 1] (see SearchOptions)"
    )


class NoFields(IndexField):
    """An image endpoint that takes the image alone (and which index's model embeds it)."""


class EmbedTextRequest(IndexField):
    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def exactly_one(self) -> EmbedTextRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class ItemPublic(BaseModel):
    id: int
    path: str = Field(description="Path relative to the index's source folder")
    width: int
    height: int
    sha256: str
    captions: list[str] = []
    duplicates: list[str] = Field([], description="Other files with identical bytes (embedded once)")
    metadata: dict = Field({}, description="The source's own columns (list files, webdataset .json)")


class ImageHit(ItemPublic):
    score: float = Field(description="Cosine similarity to the query")
    match: float | None = Field(
        None,
        description="With decoder_rerank: the log-probability that the image shows every part of the query, as the "
        "decoder answers whether it does (<= 0; near 0: yes to every part); results are sorted by match + "
        f"{COSINE_WEIGHT:g} x score. Null when not re-scored",
    )


class TextHit(BaseModel):
    id: int = Field(description="Caption id in the text index")
    score: float
    text: str
    image_id: int
    path: str


class SearchResponse(BaseModel):
    results: list[ImageHit] | list[TextHit]
    took_ms: float


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int
    model: str
    took_ms: float


class IndexSummary(BaseModel):
    name: str | None = Field(None, description="The name the server serves this index under")
    version: str
    created_at: str
    model: str
    fingerprint: str
    embed_dim: int
    metric: str
    images: int
    texts: int
    index_key: str
    search_params: str = Field("", description="The image index's search parameters (e.g. nprobe=16)")
    texts_index_key: str | None = Field(None, description="The caption index's faiss key (with captions)")
    texts_search_params: str | None = None
    skipped: int
    skipped_by_reason: dict[str, int]
    xmodal_version: str


class ModelSummary(BaseModel):
    spec: str = Field(description="The spec the server loaded")
    fingerprint: str
    device: str
    indexes: list[str] = Field(description="The indexes this one loaded model serves")


class IndexesResponse(BaseModel):
    indexes: list[IndexSummary]
    models: list[ModelSummary] = Field(description="Each model loaded once, however many indexes use it")


class ReloadResponse(BaseModel):
    index: str | None = None
    swapped: bool
    previous: str
    version: str


class RankImageFields(IndexField):
    """/v1/rank with an image: the candidate texts (in a multipart form, a JSON array string)."""

    texts: list[str] = Field(description="Candidate texts (1..max_rank_candidates), each scored against the image")


class RankTextRequest(IndexField):
    """/v1/rank with a text: indexed items to score against it."""

    text: str = Field(description="The query; empty or over-long text is refused")
    images: list[int] = Field(description="Item ids of the served index (1..max_rank_candidates)")


class RankHit(BaseModel):
    position: int = Field(description="Where this candidate was in the request's list")
    score: float = Field(description="Cosine similarity of the query and the candidate")
    text: str | None = Field(None, description="The candidate text (image queries)")
    id: int | None = Field(None, description="The candidate item id (text queries)")
    path: str | None = Field(None, description="The candidate item's path (text queries)")


class RankResponse(BaseModel):
    results: list[RankHit] = Field(description="Every candidate, best first")
    took_ms: float


class Health(BaseModel):
    status: str
    detail: str | None = None


class ErrorBody(BaseModel):
    detail: str
    request_id: str | None = Field(None, description="500 only: the X-Request-ID to quote when reporting it")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's documented error statuses, each with the ErrorBody shape (FastAPI's `responses=`)."""
    return {code: {"model": ErrorBody} for code in codes}


class CaptionRequest(IndexField):
    """/v1/caption's fields besides the image (multipart form fields, or JSON next to image_b64)."""

    mode: Literal["greedy", "beam", "sample"] = "greedy"
    beams: int | None = Field(
        None, description="Beam width, mode=beam only (1..max_beams; default max(3, alternatives))"
    )
    max_tokens: int | None = Field(
        None,
        description="Most new tokens (1..max_caption_tokens). Left out, the caption runs to the model's "
        "end-of-text, at most the room its context leaves after the prompt",
    )
    alternatives: int = Field(
        0, description="Also return the best N captions with scores (0..max_alternatives); N > 1 needs beam or sample"
    )
    prompt: str = Field("", description="Text the caption starts with; the caption continues it and leaves it out")
    # The bounds keep values the decoder's float32 arithmetic cannot take (a seed beyond 64 bits, a temperature
    # or top_p that rounds to 0) a 422 rather than a failure deep in sampling.
    seed: int | None = Field(
        None, ge=-(2**63), lt=2**64, description="mode=sample: the same seed gives the same captions (64-bit)"
    )
    top_k: int | None = Field(None, description="mode=sample: sample among the k most likely tokens (0: all)")
    top_p: float | None = Field(None, ge=MIN_SAMPLING_FLOAT, description="mode=sample: nucleus sampling, in [1e-4, 1]")
    temperature: float | None = Field(None, ge=MIN_SAMPLING_FLOAT, description="mode=sample: > 0 (at least 1e-4)")
    language: str | None = Field(
        None,
        max_length=16,
        description='Language of the caption, "en" (default) or "zh": one the model was trained to write (a model '
        "that records no languages writes English only); another is a 422",
    )


class CaptionAlternative(BaseModel):
    text: str
    score: float = Field(description="Log-probability per token, end-of-text included (higher is better)")


class CaptionResponse(BaseModel):
    caption: str
    alternatives: list[CaptionAlternative] | None = Field(None, description="With alternatives > 0: best first")
    language: str = Field("en", description="The caption's language")
    took_ms: float


class VqaRequest(IndexField):
    """/v1/vqa's fields besides the image. In a multipart form, `answers` is a JSON array string."""

    question: str = Field(description="The question; empty or over-long text is refused")
    answers: list[str] | None = Field(
        None,
        description="Candidate answers (1..max_answers): the best is chosen and every one scored. "
        "Without them the model writes an answer (CoCa models only)",
    )
    max_tokens: int = Field(
        10,
        description="Open-ended answers: most new tokens (1..max_caption_tokens). The answer ends at the model's "
        "end-of-text; the short default keeps a model that never learnt to end answers from writing a caption",
    )
    language: str | None = Field(
        None,
        max_length=16,
        description='Language of the answer, "en" or "zh": one the model was trained in (else a 422). Left out: '
        "the question's own language (Chinese characters: zh) for a model that speaks several, else en",
    )


class VqaResponse(BaseModel):
    answer: str
    scores: dict[str, float] | None = Field(
        None,
        description="Every candidate's score: mean log-probability per token (method=likelihood) "
        "or cosine similarity of image and 'question answer' (method=contrastive)",
    )
    method: Literal["generated", "likelihood", "contrastive"]
    language: str = Field("en", description="The language the model was asked to answer in")
    took_ms: float


def image_request_body(fields: type[BaseModel], multipart_types: dict | None = None) -> dict:
    """OpenAPI request body for an image endpoint: multipart `file` or JSON `image_b64`, plus `fields`.

    multipart_types overrides a field's schema in the form (e.g. a list sent as a JSON string).
    """
    schema = fields.model_json_schema()
    assert "$defs" not in schema, "image_request_body needs flat field schemas"
    properties, required = schema.get("properties", {}), schema.get("required", [])
    image_b64 = {"type": "string", "description": "base64 of the image file"}
    file = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", *required],
                        "properties": {"file": file, **properties, **(multipart_types or {})},
                    }
                },
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["image_b64", *required],
                        "properties": {"image_b64": image_b64, **properties},
                    }
                },
            },
        }
    }
