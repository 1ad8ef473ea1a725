"""What the console reports about its requests: Prometheus metrics and one JSON log line each.

    tire_web_requests_total{method,route,code}   requests answered, by route template ("/jobs/{job_id}")
    tire_web_request_seconds{method,route}       time to the end of the answer (an event stream: its life)
    tire_web_sessions                            signed-in sessions
    tire_web_open_streams                        event streams open now

Routes are templates, never paths or query strings: those hold job ids and object URIs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("services.web.requests")

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ConsoleMetrics:
    """The console's metrics in ``registry``; ``sessions`` counts the signed-in sessions when scraped."""

    def __init__(self, registry: CollectorRegistry, sessions: Callable[[], int]):
        self.requests = Counter(
            "tire_web_requests_total", "Requests answered.", ("method", "route", "code"), registry=registry
        )
        self.seconds = Histogram(
            "tire_web_request_seconds",
            "Time to the end of the answer.",
            ("method", "route"),
            buckets=_BUCKETS,
            registry=registry,
        )
        self.streams = Gauge("tire_web_open_streams", "Event streams open now.", registry=registry)
        Gauge("tire_web_sessions", "Signed-in sessions.", registry=registry).set_function(sessions)


class RequestRecorder:
    """ASGI middleware: each HTTP request counted, timed and logged (method, route, code, duration_ms)."""

    def __init__(self, app, metrics: ConsoleMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        code = 500  # an app that raises before answering

        async def send_recording(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            seconds = time.perf_counter() - started
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(code)).inc()
            self.metrics.seconds.labels(method, route).observe(seconds)
            fields = {"method": method, "route": route, "code": code, "duration_ms": round(seconds * 1e3, 1)}
            log.info("%s %s %d", method, route, code, extra=fields)
