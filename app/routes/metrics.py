from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from xmodal.app.security import ReadDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics (needs a read key when auth is on)", response_class=Response)
async def metrics(request: Request, _: ReadDep) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
