"""The app factory: `uvicorn xmodal.app.main:create_app --factory` (or `xmodal serve`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute

from xmodal.app.errors import install_error_handlers
from xmodal.app.item_files import ItemFiles
from xmodal.app.middleware import install_middleware
from xmodal.app.routes import admin, caption, embed, health, indexes, items, metrics, rank, search, vqa, web
from xmodal.app.runtime import Runtime
from xmodal.app.security import KeyRing, RateLimiter, check_exposure, require_read
from xmodal.app.settings import Settings, get_settings
from xmodal.app.slashes import TrailingSlashes
from xmodal.indexer.manifest import package_version


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    keys = KeyRing.from_settings(settings)
    auth_mode = check_exposure(settings, keys)  # InsecureConfig: a public bind without keys

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        logging.getLogger(__name__).log(logging.WARNING if "OFF" in auth_mode else logging.INFO, auth_mode)
        runtime = Runtime(settings)
        app.state.runtime = runtime
        loading = asyncio.create_task(runtime.load_in_background())
        if settings.exit_on_load_failure:
            loading.add_done_callback(lambda _: _stop_server(app) if runtime.error else None)
        yield
        loading.cancel()
        await runtime.aclose()

    docs_open = settings.public_docs or not len(keys)
    app = FastAPI(
        title="xmodal",
        summary="Cross-modal search over your images: text → image, image → image, image → text",
        version=package_version(),
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        redirect_slashes=False,  # its Location comes from the Host header; TrailingSlashes answers in place
        openapi_url="/openapi.json" if docs_open else None,  # else keyed: _keyed_docs
        docs_url="/docs" if docs_open else None,
        redoc_url="/redoc" if docs_open else None,
    )
    app.state.settings = settings
    app.state.keys = keys
    app.state.rate_limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
    app.state.auth_failure_limiter = RateLimiter(settings.auth_failure_rps, settings.auth_failure_burst)
    app.state.item_files = ItemFiles()  # which indexed files were verified (app/item_files.py)
    install_error_handlers(app)
    app.add_middleware(TrailingSlashes)  # innermost: routing sees the path without trailing slashes
    install_middleware(app, settings)
    if not docs_open:
        _keyed_docs(app)
    app.include_router(health.router)  # /healthz, /readyz stay open
    app.include_router(web.router)  # the web page at / is static; its API calls carry the key
    for module in (search, embed, items, caption, vqa, rank):  # every /v1 route needs a read key (app/security.py)
        app.include_router(module.router, dependencies=[Depends(require_read)])
    for module in (indexes, admin, metrics):  # they check their own scope (reload: admin)
        app.include_router(module.router)
    return app


def _keyed_docs(app: FastAPI) -> None:
    """/openapi.json, /docs and /redoc behind a read key (XMODAL_PUBLIC_DOCS=false with keys on)."""
    keyed = [Depends(require_read)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=keyed)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=keyed)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="xmodal - docs")

    @app.get("/redoc", include_in_schema=False, dependencies=keyed)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="xmodal - docs")


def _stop_server(app: FastAPI) -> None:
    """Refuse to serve a broken configuration. `xmodal serve` sets app.state.stop_server
    (a clean stop with exit code 1); under plain uvicorn we stop the way Ctrl-C would."""
    stop = getattr(app.state, "stop_server", None)
    stop() if stop else signal.raise_signal(signal.SIGTERM)


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name
