"""Prometheus metrics (GET /metrics), one registry per app so tests and replicas don't mix."""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        # variant: the release role that answered (champion | challenger; "deployed" without a
        # release; "-" for requests no model answered): what the rollback judgement compares
        self.latency = Histogram("ossa_request_seconds", "Request latency",
                                 ["route", "model_version", "variant", "status"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.responses = Counter("ossa_responses_total", "Responses by status", ["route", "status"], registry=r)
        self.batch_size = Histogram("ossa_batch_size", "Requests admitted per batch", ["engine"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_delay = Histogram("ossa_queue_delay_seconds", "Time a request queued before its batch",
                                     ["engine"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("ossa_queue_depth", "Requests waiting per engine", ["engine"], registry=r)
        self.generated = Counter("ossa_generated_tokens_total", "Tokens generated", ["engine"], registry=r)
        # what the rollback sensor judges (lib/canary.py): per answering variant, ok | error | slow
        # for every generation, valid | invalid for the sampled ones the domain's curator judged,
        # feedback_good | feedback_bad from POST /v1/feedback
        self.outcomes = Counter("ossa_variant_outcomes_total", "Judged outcomes per release variant",
                                ["route", "model_version", "variant", "outcome"], registry=r)
        self.info = Gauge("ossa_model_info", "A model serving a route (value: its traffic weight)",
                          ["route", "model_version", "lineage_id", "variant", "release"], registry=r)

    def batch(self, engine: str, n: int, delays: list[float], depth: int) -> None:
        self.batch_size.labels(engine).observe(n)
        for d in delays:
            self.queue_delay.labels(engine).observe(d)
        self.queue_depth.labels(engine).set(depth)

    def tokens(self, engine: str, n: int) -> None:
        self.generated.labels(engine).inc(n)

    def request(self, route: str, model_version: str, status: int, seconds: float, variant: str = "-") -> None:
        self.latency.labels(route, model_version or "-", variant or "-", str(status)).observe(seconds)
        self.responses.labels(route, str(status)).inc()

    def outcome(self, route: str, model_version: str, variant: str, outcome: str) -> None:
        self.outcomes.labels(route, model_version, variant, outcome).inc()

    def model_info(self, state: Any, variants: dict[str, Any]) -> None:
        """`variants`: route -> the engines.Served variants now answering it."""
        self.info.clear()
        for r, served in variants.items():
            for s in served:
                self.info.labels(r, s.loaded.model_version, s.loaded.lineage_id, s.role, s.release or "-").set(s.weight)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
