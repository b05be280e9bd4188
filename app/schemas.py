"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field, model_validator


class Target(str, Enum):
    images = "images"
    texts = "texts"


class TextSearchRequest(BaseModel):
    text: str = Field(description="The query; empty or over-long text is refused")
    k: int = Field(10, description="How many results (1..max_k)")


class ImageSearchRequest(BaseModel):
    image_b64: str = Field(description="The image file's bytes, base64-encoded")
    k: int = 10
    target: Target = Field(Target.images, description="images: similar images; texts: matching captions")


class EmbedTextRequest(BaseModel):
    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def exactly_one(self) -> "EmbedTextRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class EmbedImageRequest(BaseModel):
    image_b64: str


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
    version: str
    created_at: str
    model: str
    fingerprint: str
    embed_dim: int
    metric: str
    images: int
    texts: int
    index_key: str
    skipped: int
    skipped_by_reason: dict[str, int]
    xmodal_version: str


class Health(BaseModel):
    status: str
    detail: str | None = None


class ErrorBody(BaseModel):
    detail: str
