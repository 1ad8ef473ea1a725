"""``tire-web``: the console on uvicorn, configured by ``TIRE_WEB_*`` variables (``WebSettings``).

TIRE_WEB_COORDINATOR=localhost:50051 tire-web      # then open http://localhost:8080
"""

from __future__ import annotations

import logging
import os
import sys

import uvicorn
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from services.common.config import from_env
from services.common.errors import ConfigError
from services.common.logs import configure_logging
from services.web.app import build_app
from services.web.settings import ENV_PREFIX, WebSettings

log = logging.getLogger(__name__)


def main() -> None:
    try:
        settings = from_env(WebSettings, ENV_PREFIX, os.environ)
    except ConfigError as exc:
        sys.exit(f"tire-web: {exc}")
    configure_logging("web", settings.log_level)
    registry = CollectorRegistry()
    for collector in (ProcessCollector, GCCollector, PlatformCollector):
        collector(registry=registry)
    if settings.metrics_port >= 0:
        start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
    fields = {
        "port": settings.port,
        "metrics_port": settings.metrics_port,
        "coordinator": settings.coordinator,
    }
    log.info("serving", extra=fields)
    # uvicorn's access log would print query strings (object URIs); the app logs what matters itself.
    uvicorn.run(
        build_app(settings, registry=registry),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
