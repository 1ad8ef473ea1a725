"""The web console's settings, from ``TIRE_WEB_*`` variables (``services.common.config.from_env``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from services.common.config import ServerSettings
from services.common.errors import ConfigError
from services.common.registry import COORDINATOR

ENV_PREFIX = "TIRE_WEB_"
DEFAULT_PORT = 8080
VENDOR_DIR = Path(__file__).parents[2] / ".tools" / "web" / "node_modules"
"""Where ``make install`` puts the console's JavaScript packages (three, Spark); images copy them in."""

_ORIGIN = re.compile(r"https?://[^/\s]+")


@dataclass(frozen=True)
class WebSettings:
    """What the console needs.

    Attributes:
        host, port: where it listens (HTTP; TLS is the ingress's job).
        metrics_port: Prometheus metrics on their own port (``services.web.metrics``); 0: any free port,
            -1: none.
        coordinator: the coordinator's gRPC target; every call carries the signed-in person's token.
        coordinator_ca_file: PEM CA of the coordinator's TLS certificate ("": the system's roots).
        coordinator_plaintext: no TLS to the coordinator (compose's private network); a coordinator on
            loopback without a CA file is plaintext anyway, as for every client.
        public_url: the console's address as people open it (``tire up`` prints it); an ``https://``
            one makes the cookies ``Secure``.
        store_origin: the object store's origin as browsers reach it (``http://localhost:9000``):
            allowed by the Content-Security-Policy so that uploads go straight to the store through
            presigned URLs; "": every upload goes through the console.
        store_endpoint: where the console itself reaches the store (``http://minio:9000``) when the
            presigned URLs name an address only browsers reach (``localhost:9000``): requests go there
            with the URL's own Host header, which the signature covers; "": the URL's own address.
        session_ttl_s: a session ends this long after sign-in.
        max_sessions: signed-in sessions kept at once (the oldest is dropped past it).
        max_upload_bytes: largest file uploaded through the console (direct uploads: the API's limit).
        vendor_dir: the ``node_modules`` folder holding ``three`` and ``@sparkjsdev/spark``.
        log_level: stdlib logging level name.
    """

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    metrics_port: int = 9090
    coordinator: str = COORDINATOR.local_target
    coordinator_ca_file: str = ""
    coordinator_plaintext: bool = False
    public_url: str = ""
    store_origin: str = ""
    store_endpoint: str = ""
    session_ttl_s: int = 8 * 3600
    max_sessions: int = 10_000
    max_upload_bytes: int = 2 * 2**30
    vendor_dir: str = str(VENDOR_DIR)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for name, ok in (
            ("port", 0 <= self.port <= 65535),
            ("metrics_port", -1 <= self.metrics_port <= 65535),
            ("coordinator", bool(self.coordinator.strip())),
            ("public_url", not self.public_url or _ORIGIN.fullmatch(self.public_url.rstrip("/")) is not None),
            ("store_origin", not self.store_origin or _ORIGIN.fullmatch(self.store_origin) is not None),
            ("store_endpoint", not self.store_endpoint or _ORIGIN.fullmatch(self.store_endpoint) is not None),
            ("session_ttl_s", 60 <= self.session_ttl_s <= 30 * 24 * 3600),
            ("max_sessions", self.max_sessions >= 1),
            ("max_upload_bytes", self.max_upload_bytes >= 1),
        ):
            if not ok:
                raise ConfigError(f"WebSettings.{name} is out of range, got {getattr(self, name)!r}.")
        ServerSettings(log_level=self.log_level)  # the one check of a level name

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")
