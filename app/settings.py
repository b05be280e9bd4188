"""All server settings, from XMODAL_* environment variables (nested with `__`)."""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from xmodal.app.batching import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS
from xmodal.models.images import DEFAULT_MAX_PIXELS
from xmodal.models.precision import Precision
from xmodal.models.prompts import DEFAULT_VQA_PROMPT

DEFAULT_INDEX = "default"  # the name of an index given without one (`--index DIR`, XMODAL_INDEX=DIR)
INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XMODAL_", env_nested_delimiter="__", extra="ignore")

    index: Annotated[Path | dict[str, Path] | None, NoDecode] = Field(
        None,
        description='Index folder (with CURRENT) or one version folder, served as "default"; or a JSON object '
        '{"NAME": "FOLDER", ...} to serve several',
    )
    model: Annotated[str | dict[str, str] | None, NoDecode] = Field(
        None,
        description="Load this spec instead of the one in the manifest (e.g. another path to the same weights); "
        'its weights must still match the manifest\'s fingerprint. A JSON object {"NAME": "SPEC"} names it per index',
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: str = Field("auto", description="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    precision: Precision = Field(
        "auto",
        description="The model's dtype: auto (fp16 on CUDA, fp32 on the CPU, as `xmodal index --precision`), "
        "fp32, fp16 or bf16. The int8 settings need fp32",
    )
    offline: bool = Field(False, description="Never touch the network for model weights")
    model_cache_dir: str | None = Field(None, description="Hugging Face cache folder (default: HF_HUB_CACHE)")
    threads: int | None = Field(None, ge=1, description="CPU threads for the model (default: usable cores)")
    log_level: str = "info"
    exit_on_load_failure: bool = Field(True, description="Stop the process when the index or model fails to load")
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one JSON object a line")

    api_keys: dict[str, Literal["read", "admin"]] = Field(
        {}, description='API keys and their scopes as JSON: {"KEY": "read" | "admin"}; admin implies read'
    )
    api_keys_file: Path | None = Field(None, description="JSON file of the same shape as api_keys (merged with it)")
    allow_unauthenticated: bool = Field(
        False, description="Serve without API keys on a non-loopback address (refused otherwise)"
    )
    rate_limit_rps: float = Field(
        50.0, ge=0, description="Requests per second per key (per client IP without auth); 0: off"
    )
    rate_limit_burst: int = Field(100, ge=1, description="Requests a key may make at once before the rate applies")
    auth_failure_rps: float = Field(
        0.2,
        ge=0,
        description="Failed authentications (missing or wrong key) per second per client address, after the "
        "burst; past it that address gets 429 with Retry-After for every keyed request. 0: off. Behind a proxy "
        "every client shares the proxy's address",
    )
    auth_failure_burst: int = Field(
        20, ge=1, description="Failed authentications a client address may make at once before auth_failure_rps applies"
    )
    public_docs: bool = Field(
        False,
        description="With API keys on, serve /docs, /redoc and /openapi.json without a key. Off by default: the "
        "schema maps every route and limit for an unauthenticated caller, so with keys they need a read key "
        "(fetch /openapi.json with the key, or run `xmodal serve` locally without keys to browse /docs). "
        "Without keys (loopback) they are always open",
    )
    cors_origins: list[str] = Field([], description="Origins allowed by CORS (JSON list); empty: CORS off")
    allow_image_url: bool = Field(False, description="Let image endpoints fetch JSON {'image_url': 'https://...'}")
    image_url_timeout_s: float = Field(
        10.0, gt=0, description="Whole-fetch deadline for one image_url, redirects included"
    )
    image_url_max_concurrent: int = Field(
        8, ge=1, description="image_url fetches in flight at once (per process); one more is 503 with Retry-After"
    )
    image_url_allowed_networks: list[str] = Field(
        [],
        description='Networks image_url may fetch from although they are not public (JSON list, e.g. ["10.8.0.0/24"] '
        "for an internal image store); everything else non-public stays refused. Empty: public addresses only",
    )

    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM: how long in-flight requests may take to finish before they are cancelled"
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="How often to check the index's CURRENT for a new version to hot-swap (0: never)"
    )
    batching: bool = Field(True, description="Gather concurrent text/image encodes into shared model batches")
    batch_max_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, description="Most items in one model batch")
    batch_max_wait_ms: float = Field(
        DEFAULT_MAX_WAIT_MS,
        ge=0,
        description="Under load (the previous batch held several requests), how long a batcher waits "
        "to fill a batch; a lone request at low load never waits",
    )
    batch_max_queue: int = Field(DEFAULT_MAX_QUEUE, ge=1, description="Waiting items per batcher before answering 429")

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest image upload or request body")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest decoded image (width x height)")
    max_text_chars: int = Field(1000, ge=1, description="Longest query text")
    max_k: int = Field(1000, ge=1, description="Most results one request may ask for")
    max_offset: int = Field(10_000, ge=0, description="Deepest page start (offset) a search may ask for")
    max_embed_batch: int = Field(64, ge=1, description="Most texts in one /v1/embed/text request")
    max_rank_candidates: int = Field(200, ge=1, description="Most texts or item ids in one /v1/rank request")
    decoder_rerank: int = Field(
        0,
        ge=0,
        description="A text search's default decoder_rerank with a CoCa model: its first N results re-scored by "
        "whether the decoder says the image shows the query (docs/api.md#decoder-re-ranking); 0: embedding order only",
    )
    max_decoder_rerank: int = Field(100, ge=0, description="Most results one text search may have the decoder re-score")

    vqa_prompt: str = Field(DEFAULT_VQA_PROMPT, description="Prompt the caption decoder answers a question after")
    max_answers: int = Field(100, ge=1, description="Most candidate answers in one /v1/vqa request")
    max_caption_tokens: int = Field(
        40,
        ge=1,
        description="Most new tokens a caption or answer request may ask for with max_tokens "
        "(a caption without it runs to end-of-text, within the model's context)",
    )
    max_alternatives: int = Field(5, ge=1, description="Most alternative captions one /v1/caption request may ask for")
    max_beams: int = Field(8, ge=1, description="Widest beam one /v1/caption request may ask for")
    text_int8: bool = Field(
        False,
        description="CPU only: encode request texts (searches, embeddings, rank) with int8 weight copies "
        "of the text tower: ~4x faster at batch 1, cosine >= 0.999 to fp32 (bench/bench_text_encode.py)",
    )
    image_int8: bool = Field(
        False,
        description="CPU only: encode request images (image search, embeddings, rank) with int8 weight "
        "copies of the image tower's blocks: ~2x faster for ViT-B-32, worst cosine to fp32 0.99989 measured",
    )
    caption_int8: bool = Field(
        False,
        description="CPU only: decode captions and answers with int8 weight copies (faster, within a "
        "measured tolerance of fp32; see bench/bench_caption.py --int8)",
    )

    @field_validator("index", "model", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        """XMODAL_INDEX / XMODAL_MODEL: a JSON object when it looks like one, else a plain path or spec."""
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON object: {exc}") from exc
        return value

    @field_validator("index")
    @classmethod
    def _index_names(cls, value: Path | dict[str, Path] | None) -> Path | dict[str, Path] | None:
        if isinstance(value, dict):
            bad = [name for name in value if not INDEX_NAME.match(name)]
            if bad:
                raise ValueError(
                    f"index names must be 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit): {bad}"
                )
        return value

    @field_validator("image_url_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network.strip(), strict=False)  # ValueError: not a network
        return value

    @property
    def indexes(self) -> dict[str, Path]:
        """Every served index by name (a single folder is named "default")."""
        if self.index is None:
            return {}
        return dict(self.index) if isinstance(self.index, dict) else {DEFAULT_INDEX: self.index}

    def model_for(self, name: str) -> str | None:
        """The spec to load for index `name` instead of its manifest's, if any."""
        return self.model.get(name) if isinstance(self.model, dict) else self.model


@lru_cache
def get_settings() -> Settings:
    return Settings()
