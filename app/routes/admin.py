from __future__ import annotations

from fastapi import APIRouter

from xmodal.app.deps import IndexQuery, ReadyDep, SettingsDep, pick_index
from xmodal.app.routes.indexes import reload
from xmodal.app.schemas import ErrorBody, ReloadResponse
from xmodal.app.security import AdminDep

router = APIRouter(prefix="/v1/admin", tags=["admin"])

_SECRET = {"api_keys", "api_keys_file"}


@router.get("/config", summary="The server's settings, without secrets (admin key)")
async def config(settings: SettingsDep, principal: AdminDep) -> dict:
    values = settings.model_dump(mode="json", exclude=_SECRET)
    values["auth"] = {"enabled": principal.key_id is not None}
    return values


@router.post(
    "/index/reload",
    response_model=ReloadResponse,
    responses={404: {"model": ErrorBody}},
    summary="Look for a newly published index version now and hot-swap to it (admin key); the default index, "
    "or ?index=NAME (as POST /v1/indexes/{name}/reload)",
)
async def reload_index(runtime: ReadyDep, principal: AdminDep, index_name: IndexQuery = None) -> ReloadResponse:
    return await reload(pick_index(runtime, index_name))
