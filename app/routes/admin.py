from __future__ import annotations

from fastapi import APIRouter

from app.deps import SettingsDep
from app.security import AdminDep

router = APIRouter(prefix="/v1/admin", tags=["admin"])

_SECRET = {"api_keys", "api_keys_file"}


@router.get("/config", summary="The server's settings, without secrets (admin key)")
async def config(settings: SettingsDep, principal: AdminDep) -> dict:
    values = settings.model_dump(mode="json", exclude=_SECRET)
    values["auth"] = {"enabled": principal.key_id is not None}
    return values
