"""The manifest: what an index bundle holds and which model made it."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

FORMAT_VERSION = 1


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xmodal")
    except PackageNotFoundError:
        return "0+unknown"


class ModelInfo(BaseModel):
    spec: str
    fingerprint: str = Field(description="sha256 over the model's weights (see models.loading.weights_fingerprint)")
    embed_dim: int


class VectorIndexInfo(BaseModel):
    """One FAISS index in the bundle and the embeddings it was built from."""

    file: str
    embeddings: list[str] = Field(description="float16 .npy shards, row i = vector id i")
    count: int
    index_key: str = Field(description="faiss.index_factory description")
    search_params: str = Field("", description="e.g. nprobe=16, efSearch=48, nprobe=64,rerank=4 (indexer.searcher)")
    measured_recall_at_10: float | None = Field(
        None, description="recall@10 against exact search at search_params, on held-out vectors; null for exact Flat"
    )
    measured_query_ms: float | None = Field(
        None, description="median ms of one query alone on one thread, at build time"
    )
    index_bytes: int | None = Field(None, description="size of the FAISS index file")


class SkipCounts(BaseModel):
    total: int = 0
    by_reason: dict[str, int] = Field(default_factory=dict)


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    xmodal_version: str
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    model: ModelInfo
    metric: str = "ip"
    normalized: bool = True
    source: str = Field(description="absolute folder the item paths are relative to")
    source_kind: str = Field("folder", description="folder, list or webdataset")
    images: VectorIndexInfo
    image_weights: str = Field(
        "fp32",
        description="fp32, or int8: the image tower's blocks ran with int8 weight "
        "copies (`xmodal index --int8-images`)",
    )
    texts: VectorIndexInfo | None = None
    skipped: SkipCounts = Field(default_factory=SkipCounts)
    ignored_files: int = Field(0, description="files under the source without an image suffix")
    duplicates: int = Field(0, description="files identical (sha256) to an indexed one; listed on that item")
    timings_s: dict[str, float] = Field(default_factory=dict)
    reindexed_from: str | None = Field(None, description="the version `xmodal reindex` rebuilt this one's indexes from")
