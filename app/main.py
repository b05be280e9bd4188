"""The app factory: `uvicorn app.main:create_app --factory` (or `xmodal serve`)."""

from __future__ import annotations

import asyncio
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.errors import install_error_handlers
from app.routes import caption, embed, health, items, search, vqa
from app.runtime import Runtime
from app.settings import Settings, get_settings
from indexer.manifest import package_version


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime = Runtime(settings)
        app.state.runtime = runtime
        loading = asyncio.create_task(runtime.load_in_background())
        if settings.exit_on_load_failure:
            loading.add_done_callback(lambda _: runtime.error and _stop_server(app))
        yield
        loading.cancel()
        await runtime.aclose()

    app = FastAPI(
        title="xmodal",
        summary="Cross-modal search over your images: text → image, image → image, image → text",
        version=package_version(),
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    install_error_handlers(app)
    for module in (health, search, embed, items, caption, vqa):
        app.include_router(module.router)
    return app


def _stop_server(app: FastAPI) -> None:
    """Refuse to serve a broken configuration. `xmodal serve` sets app.state.stop_server
    (a clean stop with exit code 1); under plain uvicorn we stop the way Ctrl-C would."""
    stop = getattr(app.state, "stop_server", None)
    stop() if stop else signal.raise_signal(signal.SIGTERM)


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name
