"""The web page: `/` and its few static files from app/static (no build step, nothing from a CDN).

The page loads without a key (it holds no data); its API calls send the key the user enters.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from xmodal.models.errors import NotFound

router = APIRouter(include_in_schema=False)  # not part of the API: kept out of /openapi.json
STATIC = Path(__file__).resolve().parent.parent / "static"
# Served by name from this list only, so no request path ever reaches the filesystem.
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
# Scripts and styles only from files here (no inline code, nothing remote); images also from the blob:
# URLs the page makes of thumbnails it fetched with the key; fetch only to this server.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag), so an upgraded server never runs a stale app.js
}


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)
