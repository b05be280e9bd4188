from __future__ import annotations

from fastapi import APIRouter

from app.deps import ReadyDep, SettingsDep
from app.security import AdminDep

router = APIRouter(prefix="/v1/admin", tags=["admin"])

_SECRET = {"api_keys", "api_keys_file"}


@router.get("/config", summary="The server's settings, without secrets (admin key)")
async def config(settings: SettingsDep, principal: AdminDep) -> dict:
    values = settings.model_dump(mode="json", exclude=_SECRET)
    values["auth"] = {"enabled": principal.key_id is not None}
    return values


@router.post("/index/reload", summary="Look for a newly published index version now and hot-swap to it (admin key)")
async def reload_index(runtime: ReadyDep, principal: AdminDep) -> dict:
    previous = runtime.index.version.name
    swapped = await runtime.reload_if_changed()
    return {"swapped": swapped, "previous": previous, "version": runtime.index.version.name}
