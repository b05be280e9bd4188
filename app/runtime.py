"""What the server holds once loaded: the named indexes, the models they need (one per distinct model), and
the single model thread."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from xmodal.app.served import ServedIndex, ServedModel
from xmodal.app.settings import Settings
from xmodal.indexer.reader import OpenIndex
from xmodal.models.encoders import Encoder
from xmodal.models.errors import Conflict
from xmodal.models.generation import Captioner

log = logging.getLogger(__name__)


class IndexModelMismatch(Conflict, RuntimeError):
    """An index's manifest names other weights than the model it would be searched with."""


class Runtime:
    """Loads in the background so /healthz answers at once and /readyz says when we are ready.

    Ready means every configured index is open with its model: one failing index fails the whole load."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.indexes: dict[str, ServedIndex] = {}  # set all at once, when everything has loaded
        self.models: dict[str, ServedModel] = {}  # by the spec loaded
        self.error: str | None = None
        self.watcher: asyncio.Task | None = None  # polls every index's CURRENT for hot swaps
        # One thread owns the models: requests queue for it instead of oversubscribing the cores.
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmodal-model")

    @property
    def ready(self) -> bool:
        return bool(self.indexes)

    @property
    def status(self) -> str:
        return "ready" if self.ready else "failed" if self.error else "loading"

    def load(self) -> None:
        """Open each index, then the model it names (once per spec), and check they belong together."""
        started = time.perf_counter()
        settings = self.settings
        if not settings.indexes:
            raise ValueError("no index configured: pass --index DIR or set XMODAL_INDEX")
        indexes: dict[str, ServedIndex] = {}
        models: dict[str, ServedModel] = {}
        for name, path in settings.indexes.items():
            index = OpenIndex(path)
            spec = settings.model_for(name) or index.manifest.model.spec
            model = models.get(spec) or self._load_model(spec)
            models[spec] = model
            if model.encoder.fingerprint != index.manifest.model.fingerprint:
                raise IndexModelMismatch(
                    f"index {name}: model {spec} has weights {model.encoder.fingerprint}, but index {index.version} "
                    f"was built with {index.manifest.model.spec} ({index.manifest.model.fingerprint}); searching it "
                    "with other weights would return meaningless results"
                )
            model.index_names.append(name)
            indexes[name] = ServedIndex(name, path, index, model)
            log.info(
                "index %s: %s (%d images, %d texts), model %s",
                name,
                index.version,
                index.manifest.images.count,
                index.manifest.texts.count if index.manifest.texts else 0,
                spec,
            )
        for model in models.values():
            log.info(
                "model %s on %s serves indexes: %s", model.spec, model.encoder.device, ", ".join(model.index_names)
            )
        self.models, self.indexes = models, indexes
        log.info("ready in %.1fs: %d indexes, %d models", time.perf_counter() - started, len(indexes), len(models))

    def _load_model(self, spec: str) -> ServedModel:
        settings = self.settings
        encoder = Encoder.from_spec(
            spec,
            settings.device,
            offline=settings.offline or None,
            cache_dir=settings.model_cache_dir,
            threads=settings.threads,
            precision=settings.precision,
            int8_text=settings.text_int8,
            int8_images=settings.image_int8,
        )
        captioner = Captioner(encoder, settings.vqa_prompt, int8=settings.caption_int8)
        return ServedModel(spec, encoder, captioner, self.model_thread)

    async def load_in_background(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self.model_thread, self.load)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", self.error)
            return
        if self.settings.reload_interval_s > 0:
            self.watcher = asyncio.get_running_loop().create_task(self._watch_indexes(), name="index-watcher")
        if self.settings.batching:
            for model in self.models.values():
                model.start_batchers(self.settings)

    async def _watch_indexes(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            for served in list(self.indexes.values()):
                try:
                    await served.reload_if_changed()
                except Exception:  # noqa: BLE001 - a bad new version must not stop the watcher or the server
                    log.exception(
                        "index %s: could not load the new index version; still serving %s",
                        served.name,
                        served.index.version.name,
                    )

    async def aclose(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        for model in self.models.values():
            await model.aclose()
        self.close()

    def close(self) -> None:
        self.model_thread.shutdown(wait=False, cancel_futures=True)
