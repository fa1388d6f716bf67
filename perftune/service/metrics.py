"""The service's Prometheus metrics, in a registry of its own (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()
REQUESTS = Counter("perftune_requests", "HTTP requests", ["route", "status"], registry=REGISTRY)
LATENCY = Histogram("perftune_request_seconds", "request latency", ["route"], registry=REGISTRY,
                    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0))
