from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from xmodal.app.deps import IndexQuery, ReadyDep, pick_index
from xmodal.app.errors import ApiError
from xmodal.app.item_files import ItemFileError, ItemFiles
from xmodal.app.routes.indexes import summarize
from xmodal.app.schemas import ErrorBody, IndexSummary, ItemPublic

router = APIRouter(prefix="/v1", tags=["items"])
# File bodies are never sniffed into something else (e.g. HTML) by a browser.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff"}


@router.get("/items/{item_id}", response_model=ItemPublic, responses={404: {"model": ErrorBody}})
async def get_item(item_id: int, runtime: ReadyDep, index_name: IndexQuery = None) -> ItemPublic:
    row = pick_index(runtime, index_name).index.item(item_id)
    if row is None:
        raise ApiError(404, f"no item with id {item_id}")
    return ItemPublic(**row)


@router.get(
    "/items/{item_id}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/*": {}}},
        307: {"description": "items indexed from a URL"},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "the file is no longer the one indexed"},
    },
    summary="The indexed image file (found by id only; no path comes from the request), served only while it "
    "is still the file that was indexed",
)
async def get_item_image(request: Request, item_id: int, runtime: ReadyDep, index_name: IndexQuery = None) -> Response:
    index = pick_index(runtime, index_name).index  # one version for the whole request
    files: ItemFiles = request.app.state.item_files
    try:
        data = await run_in_threadpool(files.item_bytes, index, item_id)
    except ItemFileError as exc:
        raise ApiError(exc.status, exc.detail) from exc
    if isinstance(data, str):
        return RedirectResponse(data, status_code=307)  # indexed from a URL list
    media_type = mimetypes.guess_type(index.items.column("path")[item_id].as_py())[0]
    return Response(data, media_type=media_type or "application/octet-stream", headers=FILE_HEADERS)


@router.get(
    "/index",
    response_model=IndexSummary,
    responses={404: {"model": ErrorBody}},
    summary="What a served index holds (GET /v1/indexes: all of them)",
)
async def get_index(runtime: ReadyDep, index_name: IndexQuery = None) -> IndexSummary:
    return summarize(pick_index(runtime, index_name))
