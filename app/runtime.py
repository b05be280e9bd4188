"""What the server holds once loaded: the index, its model, and the model's thread."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from app.settings import Settings
from indexer.reader import OpenIndex
from models.encoders import Encoder

log = logging.getLogger(__name__)
T = TypeVar("T")


class IndexModelMismatch(RuntimeError):
    pass


class Runtime:
    """Loads in the background so /healthz answers at once and /readyz says when we are ready."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.index: OpenIndex | None = None
        self.encoder: Encoder | None = None
        self.error: str | None = None
        # One thread owns the model: requests queue for it instead of oversubscribing the cores.
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmodal-model")

    @property
    def ready(self) -> bool:
        return self.index is not None and self.encoder is not None

    @property
    def status(self) -> str:
        return "ready" if self.ready else "failed" if self.error else "loading"

    def load(self) -> None:
        """Open the index, then the model it names, and check they belong together."""
        started = time.perf_counter()
        settings = self.settings
        if settings.index is None:
            raise ValueError("no index configured: pass --index DIR or set XMODAL_INDEX")
        index = OpenIndex(settings.index)
        spec = settings.model or index.manifest.model.spec
        encoder = Encoder.from_spec(
            spec, settings.device, offline=settings.offline or None, cache_dir=settings.model_cache_dir,
            threads=settings.threads,
        )
        if encoder.fingerprint != index.manifest.model.fingerprint:
            raise IndexModelMismatch(
                f"model {spec} has weights {encoder.fingerprint}, but index {index.version} was built with "
                f"{index.manifest.model.spec} ({index.manifest.model.fingerprint}); searching it with other "
                "weights would return meaningless results"
            )
        self.index, self.encoder = index, encoder
        log.info(
            "ready in %.1fs: index %s (%d images, %d texts), model %s on %s",
            time.perf_counter() - started, index.version, index.manifest.images.count,
            index.manifest.texts.count if index.manifest.texts else 0, spec, encoder.device,
        )

    async def load_in_background(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self.model_thread, self.load)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", self.error)

    async def run_model(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    def close(self) -> None:
        self.model_thread.shutdown(wait=False, cancel_futures=True)
