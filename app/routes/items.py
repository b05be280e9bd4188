from __future__ import annotations

import mimetypes

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from xmodal.app.deps import IndexQuery, ReadyDep, pick_index
from xmodal.app.errors import ApiError
from xmodal.app.routes.indexes import summarize
from xmodal.app.schemas import ErrorBody, IndexSummary, ItemPublic

router = APIRouter(prefix="/v1", tags=["items"])


@router.get("/items/{item_id}", response_model=ItemPublic, responses={404: {"model": ErrorBody}})
async def get_item(item_id: int, runtime: ReadyDep, index_name: IndexQuery = None) -> ItemPublic:
    row = pick_index(runtime, index_name).index.item(item_id)
    if row is None:
        raise ApiError(404, f"no item with id {item_id}")
    return ItemPublic(**row)


@router.get(
    "/items/{item_id}/image",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/*": {}}},
        307: {"description": "items indexed from a URL"},
        404: {"model": ErrorBody},
    },
    summary="The indexed image file (found by id only; no path comes from the request)",
)
async def get_item_image(item_id: int, runtime: ReadyDep, index_name: IndexQuery = None) -> Response:
    index = pick_index(runtime, index_name).index  # one version for the whole request
    content = await run_in_threadpool(index.item_content, item_id)
    if content is None:
        raise ApiError(404, f"no image file for item {item_id} (unknown id, or the file was moved)")
    if isinstance(content, str):
        return RedirectResponse(content, status_code=307)  # indexed from a URL list
    if isinstance(content, bytes):  # a webdataset tar member
        row = index.item(item_id)
        return Response(content, media_type=mimetypes.guess_type(row["path"])[0] or "application/octet-stream")
    return FileResponse(content)


@router.get(
    "/index",
    response_model=IndexSummary,
    responses={404: {"model": ErrorBody}},
    summary="What a served index holds (GET /v1/indexes: all of them)",
)
async def get_index(runtime: ReadyDep, index_name: IndexQuery = None) -> IndexSummary:
    return summarize(pick_index(runtime, index_name))
