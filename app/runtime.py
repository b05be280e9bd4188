"""What the server holds once loaded: the index, its model, and the model's thread."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import numpy as np
import torch

from app.batching import DynamicBatcher
from app.settings import Settings
from indexer import store
from indexer.reader import OpenIndex
from models.encoders import Encoder
from models.generation import Captioner

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
        self.captioner: Captioner | None = None  # captions and VQA from the same model
        self.error: str | None = None
        self.watcher: asyncio.Task | None = None  # polls the index's CURRENT for hot swaps
        self.text_batcher: DynamicBatcher | None = None  # set once loaded, when settings.batching
        self.image_batcher: DynamicBatcher | None = None
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
        self.captioner = Captioner(encoder, settings.vqa_prompt, int8=settings.caption_int8)
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
            return
        if self.settings.reload_interval_s > 0:
            self.watcher = asyncio.get_running_loop().create_task(self._watch_index(), name="index-watcher")
        if self.settings.batching:
            self.text_batcher = self._batcher("text", lambda texts: list(self.encoder.encode_texts(texts)))
            self.image_batcher = self._batcher("image", lambda pixels: list(self.encoder.encode_images(torch.stack(pixels))))

    async def _watch_index(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                await self.reload_if_changed()
            except Exception:  # noqa: BLE001 - a bad new version must not stop the watcher or the server
                log.exception("could not load the new index version; still serving %s", self.index.version.name)

    async def reload_if_changed(self) -> bool:
        """Hot swap: when CURRENT names a new version, open it off the event loop and swap.

        Handlers take `runtime.index` once per request, so in-flight requests finish on the version
        they started with, and the swap itself is one reference assignment."""
        version = store.resolve_version(self.settings.index)
        if self.index is None or version == self.index.version:
            return False
        fresh = await asyncio.get_running_loop().run_in_executor(None, OpenIndex, version)
        if fresh.manifest.model.fingerprint != self.encoder.fingerprint:
            log.error("not serving %s: built with %s, not the loaded model", version.name, fresh.manifest.model.spec)
            return False
        previous, self.index = self.index, fresh
        log.info("hot swap: %s -> %s (%d images)", previous.version.name, version.name, fresh.manifest.images.count)
        return True

    def _batcher(self, name: str, run_batch) -> DynamicBatcher:
        settings = self.settings
        batcher = DynamicBatcher(name, run_batch, self.model_thread, settings.batch_max_size,
                                 settings.batch_max_wait_ms, settings.batch_max_queue)
        batcher.start()
        return batcher

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for texts; concurrent requests share model calls when batching is on."""
        if self.text_batcher is None:
            return await self.run_model(self.encoder.encode_texts, texts)
        return np.stack(await asyncio.gather(*(self.text_batcher.submit(text) for text in texts)))

    async def embed_images(self, pixels: list[torch.Tensor]) -> np.ndarray:
        """Unit vectors for preprocessed images (3, H, W each)."""
        if self.image_batcher is None:
            return await self.run_model(self.encoder.encode_images, torch.stack(pixels))
        return np.stack(await asyncio.gather(*(self.image_batcher.submit(p) for p in pixels)))

    async def aclose(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        for batcher in (self.text_batcher, self.image_batcher):
            if batcher is not None:
                await batcher.stop()
        self.close()

    async def run_model(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    def close(self) -> None:
        self.model_thread.shutdown(wait=False, cancel_futures=True)
