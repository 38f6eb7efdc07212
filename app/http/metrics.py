"""Prometheus metrics, one registry per app.

Why a registry per app and not the global one: tests and benchmarks build several apps in one process;
with the default registry the second app would fail with "Duplicated timeseries". What is measured is
what an operator asks first: how many requests ended how, how long they waited for the GPU, how long the
GPU took, how deep the queue is, how often the active LoRA was switched.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class _AdapterSwitches:
    """Reads the engine's own counter at scrape time (the engine knows nothing about Prometheus)."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self):
        family = CounterMetricFamily("flux_adapter_switches", "Times the active LoRA adapter or its scale changed.")
        family.add_metric([], float(self._read()))
        yield family


class _Compilations:
    """torch.compile graphs compiled by the engine (one per image size; a rise after warm-up is a recompile)."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self):
        family = CounterMetricFamily("flux_compilations", "Transformer graphs compiled by torch.compile "
                                     "(one per image size; never per LoRA or strength change).")
        family.add_metric([], float(self._read()))
        yield family


class _EagerImages:
    """Images a compiled engine ran eagerly because their size was not compiled at start-up."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self):
        family = CounterMetricFamily("flux_eager_images", "Images of a size not compiled at start-up "
                                     "(FLUX_COMPILE_WARMUP_SIZES), run eagerly instead of compiling on the request.")
        family.add_metric([], float(self._read()))
        yield family


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("flux_requests", "Generation requests by endpoint and outcome.",
                                ["endpoint", "outcome"], registry=self.registry)
        self.queue_wait = Histogram("flux_queue_wait_seconds", "Time a request waited for the GPU worker.",
                                    buckets=_SECONDS, registry=self.registry)
        self.generation = Histogram("flux_generation_seconds", "Time the engine took for one image.",
                                    buckets=_SECONDS, registry=self.registry)
        self.queue_depth = Gauge("flux_queue_depth", "Requests waiting in the queue (the running one excluded).",
                                 registry=self.registry)
        self.busy = Gauge("flux_worker_busy", "1 while an image is being generated.", registry=self.registry)

    def bind(self, worker, engine) -> None:
        self.queue_depth.set_function(worker.depth)
        self.busy.set_function(lambda: 1.0 if worker.busy() else 0.0)
        if getattr(self, "_switches", None) is not None:  # a second lifespan of the same app
            self.registry.unregister(self._switches)
        self._switches = _AdapterSwitches(lambda: getattr(engine.adapters, "switches", 0))
        self.registry.register(self._switches)
        if getattr(self, "_compilations", None) is not None:
            self.registry.unregister(self._compilations)
        counter = getattr(engine, "compilations", None)
        self._compilations = _Compilations(lambda: counter.total if counter is not None else 0)
        self.registry.register(self._compilations)
        if getattr(self, "_eager", None) is not None:
            self.registry.unregister(self._eager)
        self._eager = _EagerImages(lambda: getattr(counter, "eager_images", 0))
        self.registry.register(self._eager)

    def render(self) -> bytes:
        return generate_latest(self.registry)
