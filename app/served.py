"""What one server holds per model and per index: a loaded model (shared by every index built with the same
spec and weights) with its batchers, and a named index whose open version is hot-swapped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from xmodal.app.batching import DynamicBatcher
from xmodal.app.settings import Settings
from xmodal.indexer import store
from xmodal.indexer.reader import OpenIndex
from xmodal.models.encoders import Encoder
from xmodal.models.generation import Captioner

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServedModel:
    """One loaded model: its encoder, its captioner (captions and VQA from the same weights) and, once
    started, one text and one image batcher. Every model call runs on the runtime's single model thread."""

    def __init__(self, spec: str, encoder: Encoder, captioner: Captioner, model_thread: Executor):
        self.spec, self.encoder, self.captioner, self.model_thread = spec, encoder, captioner, model_thread
        self.index_names: list[str] = []  # the indexes this model reads
        self.text_batcher: DynamicBatcher | None = None  # set by start_batchers(), when settings.batching
        self.image_batcher: DynamicBatcher | None = None

    @property
    def batchers(self) -> dict[str, DynamicBatcher]:
        return {name: b for name, b in (("text", self.text_batcher), ("image", self.image_batcher)) if b is not None}

    def start_batchers(self, settings: Settings) -> None:
        """On the event loop, once loaded."""

        def batcher(name: str, run_batch) -> DynamicBatcher:
            started = DynamicBatcher(
                name,
                run_batch,
                self.model_thread,
                settings.batch_max_size,
                settings.batch_max_wait_ms,
                settings.batch_max_queue,
            )
            started.start()
            return started

        self.text_batcher = batcher("text", lambda texts: list(self.encoder.encode_texts(texts)))
        self.image_batcher = batcher("image", lambda pixels: list(self.encoder.encode_image_list(pixels)))

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for texts; concurrent requests share model calls when batching is on."""
        if self.text_batcher is None:
            return await self.run_model(self.encoder.encode_texts, texts)
        return np.stack(await asyncio.gather(*(self.text_batcher.submit(text) for text in texts)))

    async def embed_images(self, pixels: list[torch.Tensor]) -> np.ndarray:
        """Unit vectors for preprocessed images (3, H, W each)."""
        if self.image_batcher is None:
            return await self.run_model(self.encoder.encode_image_list, pixels)
        return np.stack(await asyncio.gather(*(self.image_batcher.submit(p) for p in pixels)))

    async def run_model(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def aclose(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()


class ServedIndex:
    """A named index folder: the version being served and the model that reads it.

    Handlers take `served.index` once per request, so in-flight requests finish on the version they started
    with, and a hot swap is one reference assignment."""

    def __init__(self, name: str, path: Path, index: OpenIndex, model: ServedModel):
        self.name, self.path, self.index, self.model = name, path, index, model

    async def reload_if_changed(self) -> bool:
        """When CURRENT names a new version, open it off the event loop and swap to it; a version built with
        other weights than the loaded model's is refused (logged) and the current one kept."""
        version = store.resolve_version(self.path)
        if version == self.index.version:
            return False
        fresh = await asyncio.get_running_loop().run_in_executor(None, OpenIndex, version)
        if fresh.manifest.model.fingerprint != self.model.encoder.fingerprint:
            log.error(
                "index %s: not serving %s: built with %s, not the loaded model",
                self.name,
                version.name,
                fresh.manifest.model.spec,
            )
            return False
        previous, self.index = self.index, fresh
        log.info(
            "index %s: hot swap %s -> %s (%d images)",
            self.name,
            previous.version.name,
            version.name,
            fresh.manifest.images.count,
        )
        return True
