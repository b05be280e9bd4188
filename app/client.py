"""Python clients for the xmodal HTTP API: `XmodalClient` (sync) and `AsyncXmodalClient`, over httpx.

    with XmodalClient("http://127.0.0.1:8000", api_key="...") as xm:
        hits = xm.search_text("a dog on a beach", k=5).results

Every method returns the server's response model (app/schemas.py). Every method that reads an index or uses a
model takes `index=NAME` to pick one of the served indexes (GET /v1/indexes); left out, the server's default.
A 4xx/5xx raises `XmodalHTTPError` (not the server side's xmodal.models.errors.XmodalError) with the status
and the server's `detail`; 429 and 503 are retried (at most `retries` more times), waiting what the
server's Retry-After says (capped at `max_wait_s`), else an exponential backoff. Images are a path, bytes or a
PIL image. This module imports no model code: it needs httpx, pydantic and (for PIL images) Pillow.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, cast
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from xmodal.app.schemas import (
    CaptionResponse,
    EmbedResponse,
    Health,
    IndexesResponse,
    IndexSummary,
    ItemPublic,
    RankResponse,
    SearchResponse,
    VqaResponse,
)

if TYPE_CHECKING:
    import PIL.Image  # Pillow is optional for callers

ImageLike = Union[str, Path, bytes, "PIL.Image.Image"]
RETRY_STATUSES = (429, 503)


class XmodalHTTPError(Exception):
    """The server answered an error: `status`, its `detail` text, and the X-Request-ID to find it in the logs."""

    def __init__(self, status: int, detail: str, request_id: str | None = None):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.request_id = status, detail, request_id


def _image_bytes(image: ImageLike) -> tuple[str, bytes]:
    if isinstance(image, (bytes, bytearray)):
        return "image", bytes(image)
    if isinstance(image, (str, Path)):
        path = Path(image)
        return path.name, path.read_bytes()
    if hasattr(image, "save"):  # a PIL image: sent losslessly as PNG
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "image.png", buffer.getvalue()
    raise TypeError(f"image must be a path, bytes or a PIL image, not {type(image).__name__}")


def _form(**fields: Any) -> dict[str, str]:
    """Multipart fields: None left out, lists as JSON array strings, the rest as text."""
    return {
        name: json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        for name, value in fields.items()
        if value is not None
    }


def _json(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error(response: httpx.Response) -> XmodalHTTPError:
    try:
        detail = response.json().get("detail") or response.reason_phrase
    except (ValueError, AttributeError):
        detail = response.text or response.reason_phrase
    return XmodalHTTPError(response.status_code, str(detail), response.headers.get("x-request-id"))


class _Endpoints:
    """Every endpoint once; `_call` is the sync or async transport (so async methods return awaitables)."""

    def _call(self, method: str, path: str, parse: Callable[[httpx.Response], Any], retry: bool = True, **kwargs):
        raise NotImplementedError

    # search
    def search_text(
        self,
        text: str,
        k: int = 10,
        *,
        offset: int = 0,
        min_score: float | None = None,
        filters: dict | None = None,
        dedup: float | None = None,
        index: str | None = None,
        decoder_rerank: int | None = None,
        language: str | None = None,
    ) -> SearchResponse:
        """`decoder_rerank`: the decoder re-scores the first N results (docs/api.md#decoder-re-ranking); None: the server's default."""
        body = _json(
            text=text,
            k=k,
            offset=offset,
            min_score=min_score,
            filters=filters,
            dedup=dedup,
            index=index,
            decoder_rerank=decoder_rerank,
            language=language,
        )
        return self._call("POST", "/v1/search/text", _model(SearchResponse), json=body)

    def search_image(
        self,
        image: ImageLike,
        k: int = 10,
        *,
        offset: int = 0,
        min_score: float | None = None,
        target: Literal["images", "texts"] = "images",
        dedup: float | None = None,
        index: str | None = None,
    ) -> SearchResponse:
        data = _form(k=k, offset=offset, min_score=min_score, target=target, dedup=dedup, index=index)
        return self._call("POST", "/v1/search/image", _model(SearchResponse), files=_file(image), data=data)

    def search_vector(
        self,
        vector: list[float],
        k: int = 10,
        *,
        offset: int = 0,
        min_score: float | None = None,
        filters: dict | None = None,
        target: Literal["images", "texts"] = "images",
        dedup: float | None = None,
        index: str | None = None,
    ) -> SearchResponse:
        vector = [float(x) for x in vector]  # numpy arrays too
        body = _json(
            vector=vector,
            k=k,
            offset=offset,
            min_score=min_score,
            filters=filters,
            target=target,
            dedup=dedup,
            index=index,
        )
        return self._call("POST", "/v1/search/vector", _model(SearchResponse), json=body)

    # embeddings
    def embed_text(self, text: str | list[str], *, index: str | None = None) -> EmbedResponse:
        body = {"texts": list(text)} if isinstance(text, (list, tuple)) else {"text": text}
        return self._call("POST", "/v1/embed/text", _model(EmbedResponse), json=_json(**body, index=index))

    def embed_image(self, image: ImageLike, *, index: str | None = None) -> EmbedResponse:
        return self._call("POST", "/v1/embed/image", _model(EmbedResponse), files=_file(image), data=_form(index=index))

    # zero-shot ranking
    def rank_texts(self, image: ImageLike, texts: list[str], *, index: str | None = None) -> RankResponse:
        """Score every text against the image, best first (with the index's model)."""
        data = _form(texts=list(texts), index=index)
        return self._call("POST", "/v1/rank", _model(RankResponse), files=_file(image), data=data)

    def rank_items(self, text: str, item_ids: list[int], *, index: str | None = None) -> RankResponse:
        """Score indexed items (by id) against the text, best first."""
        body = _json(text=text, images=[int(i) for i in item_ids], index=index)
        return self._call("POST", "/v1/rank", _model(RankResponse), json=body)

    # items and the indexes
    def item(self, item_id: int, *, index: str | None = None) -> ItemPublic:
        return self._call("GET", f"/v1/items/{int(item_id)}", _model(ItemPublic), params=_json(index=index))

    def item_image(self, item_id: int, *, index: str | None = None) -> bytes:
        """The indexed file's bytes (an item indexed from a URL is fetched from that URL)."""
        return self._call(
            "GET", f"/v1/items/{int(item_id)}/image", _content, params=_json(index=index), follow_redirects=True
        )

    def index(self, index: str | None = None) -> IndexSummary:
        return self._call("GET", "/v1/index", _model(IndexSummary), params=_json(index=index))

    def indexes(self) -> IndexesResponse:
        """Every served index (name, version, model, counts, index type) and the models loaded."""
        return self._call("GET", "/v1/indexes", _model(IndexesResponse))

    # captions and questions
    def caption(
        self,
        image: ImageLike,
        *,
        mode: Literal["greedy", "beam", "sample"] = "greedy",
        beams: int | None = None,
        max_tokens: int | None = None,
        alternatives: int = 0,
        prompt: str = "",
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        index: str | None = None,
        language: str | None = None,
    ) -> CaptionResponse:
        """The image's caption. max_tokens=None (the default) lets it run to the model's end-of-text.
        language: "en" (default) or another the model was trained in, e.g. "zh"."""
        data = _form(
            mode=mode,
            beams=beams,
            max_tokens=max_tokens,
            alternatives=alternatives,
            prompt=prompt or None,
            seed=seed,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            index=index,
            language=language,
        )
        return self._call("POST", "/v1/caption", _model(CaptionResponse), files=_file(image), data=data)

    def vqa(
        self,
        image: ImageLike,
        question: str,
        answers: list[str] | None = None,
        *,
        max_tokens: int = 10,
        index: str | None = None,
        language: str | None = None,
    ) -> VqaResponse:
        """The answer; language None: the question's own (for a model that speaks several), else English."""
        data = _form(
            question=question,
            answers=list(answers) if answers is not None else None,
            max_tokens=max_tokens,
            index=index,
            language=language,
        )
        return self._call("POST", "/v1/vqa", _model(VqaResponse), files=_file(image), data=data)

    # health and admin
    def health(self) -> Health:
        return self._call("GET", "/healthz", _model(Health), retry=False)

    def ready(self) -> Health:
        """The readiness answer, also while loading or failed (status `loading`/`failed`): never raises for 503."""
        return self._call("GET", "/readyz", _readiness, retry=False)

    def admin_config(self) -> dict:
        return self._call("GET", "/v1/admin/config", _content_json)

    def reload_index(self, index: str | None = None) -> dict:
        """Hot-swap an index (the default one without `index`) to its newly published version now (admin key):
        {"index", "swapped", "previous", "version"}."""
        path = f"/v1/indexes/{quote(index, safe='')}/reload" if index is not None else "/v1/admin/index/reload"
        return self._call("POST", path, _content_json)


def _model(model: type[BaseModel]) -> Callable[[httpx.Response], BaseModel]:
    def parse(response: httpx.Response) -> BaseModel:
        if response.is_error:
            raise _error(response)
        return model.model_validate_json(response.content)

    return parse


def _readiness(response: httpx.Response) -> Health:
    if response.status_code == 503:
        return Health.model_validate_json(response.content)
    return cast(Health, _model(Health)(response))


def _content(response: httpx.Response) -> bytes:
    if response.is_error:
        raise _error(response)
    return response.content


def _content_json(response: httpx.Response) -> dict:
    if response.is_error:
        raise _error(response)
    return response.json()


def _file(image: ImageLike) -> dict:
    name, data = _image_bytes(image)
    return {"file": (name, data, "application/octet-stream")}


class _Retrying:
    def __init__(self, retries: int, backoff_s: float, max_wait_s: float):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retries, self.backoff_s, self.max_wait_s = retries, backoff_s, max_wait_s

    def wait_s(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up and return this response."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
            return None
        after = _retry_after(response)
        return min(self.max_wait_s, after if after is not None else self.backoff_s * 2**attempt)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class XmodalClient(_Endpoints, _Retrying):
    """Blocking client. `http` may be your own httpx.Client (its base_url and headers are kept)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_wait_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        _Retrying.__init__(self, retries, backoff_s, max_wait_s)
        self._owned = http is None
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        self.http.headers.update(_headers(api_key))
        self._sleep = sleep

    def _call(self, method: str, path: str, parse, retry: bool = True, **kwargs):
        attempt = 0
        while True:
            response = self.http.request(method, path, **kwargs)
            wait = self.wait_s(response, attempt) if retry else None
            if wait is None:
                return parse(response)
            self._sleep(wait)
            attempt += 1

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> XmodalClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncXmodalClient(_Endpoints, _Retrying):
    """asyncio client: the same methods as XmodalClient, awaited (`await xm.search_text(...)`)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_wait_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        _Retrying.__init__(self, retries, backoff_s, max_wait_s)
        self._owned = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)
        self.http.headers.update(_headers(api_key))
        self._sleep = sleep

    async def _call(self, method: str, path: str, parse, retry: bool = True, **kwargs):
        attempt = 0
        while True:
            response = await self.http.request(method, path, **kwargs)
            wait = self.wait_s(response, attempt) if retry else None
            if wait is None:
                return parse(response)
            await self._sleep(wait)
            attempt += 1

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncXmodalClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
