from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from xmodal.app.deps import RuntimeDep
from xmodal.app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Model and index are loaded (503 while loading or after a failed load)",
    responses={503: {"model": Health}},
)
async def readyz(runtime: RuntimeDep) -> Health | JSONResponse:
    if runtime.ready:
        return Health(status="ready")
    body = Health(status=runtime.status, detail=runtime.error)
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
