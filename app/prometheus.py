"""Prometheus metrics: request latency per route template and status, read from the middleware; batch sizes,
queue depth, model and index facts, read from the runtime at scrape time. One registry per app."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self, get_runtime: Callable[[], object | None]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "xmodal_request_duration_seconds",
            "Request latency by method, route template and status",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(RuntimeCollector(get_runtime))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.latency.labels(method, route, str(status)).observe(seconds)


class RuntimeCollector(Collector):
    """Reads the batchers, model and index each time Prometheus scrapes: nothing to keep in sync."""

    def __init__(self, get_runtime: Callable[[], object | None]):
        self.get_runtime = get_runtime

    def describe(self):
        return []  # values appear once the model is loaded; no fixed description

    def collect(self):
        runtime = self.get_runtime()
        ready = GaugeMetricFamily("xmodal_ready", "1 when every index and its model are loaded")
        ready.add_metric([], 1.0 if runtime is not None and runtime.ready else 0.0)
        yield ready
        if runtime is None:
            return
        sizes = HistogramMetricFamily(
            "xmodal_batch_size", "Items per model batch, by batcher and model", labels=["batcher", "model"]
        )
        depth = GaugeMetricFamily(
            "xmodal_batch_queue_depth", "Items waiting for a model batch", labels=["batcher", "model"]
        )
        for model in runtime.models.values():
            for name, batcher in model.batchers.items():
                counts = dict(batcher.size_counts)
                buckets = [(str(b), sum(n for size, n in counts.items() if size <= b)) for b in BATCH_BUCKETS]
                buckets.append(("+Inf", sum(counts.values())))
                sizes.add_metric([name, model.spec], buckets, sum_value=sum(size * n for size, n in counts.items()))
                depth.add_metric([name, model.spec], batcher.depth)
        yield sizes
        yield depth
        info = InfoMetricFamily("xmodal_model", "The model serving each index, and the index version", labels=["index"])
        vectors = GaugeMetricFamily("xmodal_index_vectors", "Vectors in each served index", labels=["index", "kind"])
        for name, served in runtime.indexes.items():
            index, encoder = served.index, served.model.encoder
            manifest = index.manifest
            info.add_metric(
                [name],
                {
                    "spec": served.model.spec,
                    "fingerprint": encoder.fingerprint,
                    "device": str(encoder.device),
                    "index_version": getattr(index.version, "name", str(index.version)),
                },
            )
            vectors.add_metric([name, "images"], manifest.images.count)
            vectors.add_metric([name, "texts"], manifest.texts.count if manifest.texts else 0)
        yield info
        yield vectors
