"""The service's Prometheus metrics, from the store and the server process's own counters (served at ``GET /metrics``).

Workers are separate, short-lived processes, so nothing here reads worker-process state: job and
queue numbers and stage durations come from the store (the source of truth, which also survives
restarts), worker slots from the executor, and callback deliveries from the callback sender,
which runs in the server process. Every app has its own registry (no global one), so tests can
build many apps in one process.

The endpoint needs the same bearer token as the rest of the API (the service is never open); a
Prometheus scrape config sends it with ``authorization: {type: Bearer, credentials: <token>}``.

Metrics (all prefixed ``recon_``)::

    jobs{status}                          gauge      jobs in the store per contract status
    queue_depth{queue}                    gauge      jobs waiting for a worker, per queue
    workers_online                        gauge      worker slots online (local: RECON_MAX_WORKERS; Celery: every worker process)
    running_workers / max_workers         gauge      worker slots running a job now / allowed on this node
    callbacks_pending                     gauge      callbacks in the outbox not yet delivered
    callbacks_dead                        gauge      callbacks given up, kept as dead letters
    stage_duration_seconds{stage,outcome} histogram  wall time of each pipeline stage run (outcome:
                                                     done, failed, cancelled, interrupted), all time
    callback_deliveries_total{kind}       counter    callbacks the backend accepted (2xx)
    callback_retries_total{kind}          counter    failed attempts that were retried
    callback_give_ups_total{kind,reason}  counter    callbacks abandoned: max_age (RECON_CALLBACK_MAX_AGE_S) or rejected (4xx)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from recon_service.settings import Settings
    from recon_service.store import Store
    from recon_service.workers import Executor

STAGE_BUCKETS_S: tuple[float, ...] = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
"""Upper bounds (seconds) of the stage duration histogram: simulated stages take a fraction of a
second, real ones from about a second (ingest) to tens of minutes (dense, on the high preset)."""


class CallbackCounters:
    """The callback sender's counters (it runs in the server process, so these are exact)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._delivered = Counter("recon_callback_deliveries", "Callbacks the backend accepted (2xx).", ["kind"], registry=registry)
        self._retried = Counter("recon_callback_retries", "Failed callback attempts that will be retried.", ["kind"], registry=registry)
        self._gave_up = Counter(
            "recon_callback_give_ups",
            "Callbacks abandoned: reason=max_age (RECON_CALLBACK_MAX_AGE_S passed) or rejected (a non-retryable answer).",
            ["kind", "reason"],
            registry=registry,
        )
        for kind in ("status", "progress"):  # present from the start, so rate() works on the first increase
            self._delivered.labels(kind)
            self._retried.labels(kind)
            for reason in ("max_age", "rejected"):
                self._gave_up.labels(kind, reason)

    def delivered(self, kind: str) -> None:
        self._delivered.labels(kind).inc()

    def retried(self, kind: str) -> None:
        self._retried.labels(kind).inc()

    def gave_up(self, kind: str, *, rejected: bool) -> None:
        self._gave_up.labels(kind, "rejected" if rejected else "max_age").inc()


class _StoreCollector(Collector):
    """Gauges read from the store at scrape time, and the stage histogram it feeds incrementally."""

    def __init__(self, settings: Settings, store: Store, executor: Executor) -> None:
        self._settings, self._store, self._executor = settings, store, executor
        self._lock = threading.Lock()
        self._last_seq = 0
        # (stage, outcome) -> [count per bucket (non-cumulative, +Inf last), sum of seconds]
        self._stages: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def describe(self) -> list[Metric]:
        return []  # collected lazily: describing would read the store at registration

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("recon_jobs", "Jobs in the store per contract status.", labels=["status"])
        for status, count in self._store.count_by_status().items():
            jobs.add_metric([status], count)
        yield jobs
        depth = GaugeMetricFamily("recon_queue_depth", "Jobs waiting for a worker, per queue.", labels=["queue"])
        for queue, count in sorted(self._executor.queue_depths().items()):
            depth.add_metric([queue], count)
        yield depth
        workers = self._executor.workers()
        yield GaugeMetricFamily("recon_workers_online", "Worker slots online (a process each, one job at a time).", value=len(workers))
        yield GaugeMetricFamily("recon_running_workers", "Worker slots running a job now.", value=sum(1 for w in workers if w["job_id"]))
        yield GaugeMetricFamily("recon_max_workers", "Worker processes allowed at once (RECON_MAX_WORKERS).", value=self._settings.max_workers)
        yield GaugeMetricFamily("recon_callbacks_pending", "Callbacks in the outbox not yet delivered.", value=self._store.pending_callback_count())
        yield GaugeMetricFamily(
            "recon_callbacks_dead", "Callbacks given up and kept as dead letters (POST /jobs/{id}/callbacks/redeliver).", value=self._store.dead_callback_count()
        )
        yield self._stage_histogram()

    def _stage_histogram(self) -> HistogramMetricFamily:
        with self._lock:
            while True:
                rows = self._store.closed_stage_runs(self._last_seq)
                if not rows:
                    break
                for seq, stage, outcome, seconds in rows:
                    counts, total = self._stages.setdefault((stage, outcome), ([0] * (len(STAGE_BUCKETS_S) + 1), [0.0]))
                    counts[next((i for i, bound in enumerate(STAGE_BUCKETS_S) if seconds <= bound), len(STAGE_BUCKETS_S))] += 1
                    total[0] += seconds
                    self._last_seq = seq
            family = HistogramMetricFamily(
                "recon_stage_duration_seconds", "Wall time of each pipeline stage run, by stage and outcome.", labels=["stage", "outcome"]
            )
            for (stage, outcome), (counts, total) in sorted(self._stages.items()):
                cumulative, buckets = 0, []
                for bound, count in zip((*map(_bound, STAGE_BUCKETS_S), "+Inf"), counts, strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                family.add_metric([stage, outcome], buckets, total[0])
        return family


def _bound(seconds: float) -> str:
    return repr(float(seconds))


class ServiceMetrics:
    """One app's metrics: its registry, the store collector and the callback counters."""

    def __init__(self, settings: Settings, store: Store, executor: Executor) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StoreCollector(settings, store, executor))
        self.callbacks = CallbackCounters(self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
