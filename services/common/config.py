"""Settings from environment variables, into frozen dataclasses.

``from_env(RendererSettings, prefix="TIRE_RENDERER_")`` reads ``TIRE_RENDERER_<FIELD>`` for each field;
a nested dataclass field ``server`` reads ``TIRE_RENDERER_SERVER_<FIELD>``. A bad or missing value is a
deployment mistake, so it raises ``ConfigError`` at start-up, naming the variable, rather than surfacing
later as a failed request.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from services.common.errors import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


@dataclass(frozen=True)
class ServerSettings:
    """What every service's gRPC server needs, read with the service's own prefix ``TIRE_<SERVICE>_``
    (``TIRE_RENDERER_PORT``, ``TIRE_RENDERER_GRACE_S``).

    Attributes:
        port: gRPC port; 0 binds any free port.
        host: address to bind.
        metrics_port: Prometheus HTTP port; 0 binds any free port, -1 disables metrics.
        max_workers: threads handling calls, i.e. the number of concurrent calls.
        max_concurrent_rpcs: calls in progress (running or waiting for a thread) past which a new one
            is refused at once with RESOURCE_EXHAUSTED, for its caller to try another replica or later;
            0: no limit (calls wait for a thread without bound).
        max_message_bytes: largest message sent or received (bulk data goes through the store).
        max_connection_age_s: connections are closed after this long so clients re-resolve DNS
            and spread load onto new pods.
        grace_s: on shutdown (and when a connection reaches its age), in-flight calls get this long.
        log_level: stdlib logging level name.
        tls_cert_file: PEM certificate chain to serve TLS with ("": plaintext); it and the key are read
            again when they change, so a renewed certificate needs no restart.
        tls_key_file: PEM private key of that certificate.
        tls_client_ca_file: PEM CA certificates; when set, clients must present a certificate signed by
            one of them (mutual TLS).
        health_port: a second, plaintext port serving ``grpc.health.v1`` alone, for probes that cannot
            speak TLS (Kubernetes' gRPC probes); -1: none.
    """

    port: int = 50051
    host: str = "0.0.0.0"
    metrics_port: int = 9090
    max_workers: int = 8
    max_concurrent_rpcs: int = 0
    max_message_bytes: int = 16 * 1024 * 1024
    max_connection_age_s: float = 300.0
    grace_s: float = 30.0
    log_level: str = "INFO"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    health_port: int = -1

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, "port", "must be between 0 and 65535"),
            (-1 <= self.metrics_port <= 65535, "metrics_port", "must be between -1 and 65535"),
            (-1 <= self.health_port <= 65535, "health_port", "must be between -1 and 65535"),
            (self.max_workers >= 1, "max_workers", "must be at least 1"),
            (self.max_concurrent_rpcs >= 0, "max_concurrent_rpcs", "must not be negative (0: no limit)"),
            (self.max_message_bytes >= 1, "max_message_bytes", "must be at least 1"),
            (self.max_connection_age_s > 0, "max_connection_age_s", "must be positive"),
            (self.grace_s >= 0, "grace_s", "must not be negative"),
            (self.log_level.upper() in logging.getLevelNamesMapping(), "log_level", "must be a level name"),
            (
                bool(self.tls_cert_file) == bool(self.tls_key_file),
                "tls_key_file",
                "must be set with tls_cert_file",
            ),
            (
                not self.tls_client_ca_file or bool(self.tls_cert_file),
                "tls_client_ca_file",
                "needs tls_cert_file",
            ),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(f"ServerSettings.{name} {problem}, got {getattr(self, name)!r}.")


def file_stamp(path: str) -> tuple[int, int, int]:
    """What changes when a file is replaced or written: its inode, size and modification time (ns).
    Files read again when they change (tokens, certificates) compare these. Raises OSError."""
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns


def from_env(cls: type[T], prefix: str, environ: Mapping[str, str] = os.environ) -> T:
    """Build the dataclass ``cls`` from ``environ[prefix + FIELD_NAME.upper()]``.

    Supported field types: ``str``, ``int``, ``float``, ``bool`` (1/0/true/false/yes/no, any case),
    ``tuple[X, ...]`` of those (comma separated, blanks dropped), ``X | None`` (an empty value is None),
    and nested dataclasses (read with prefix ``prefix + FIELD.upper() + "_"``). Fields without a default
    are required.

    Raises:
        ConfigError: a required variable is missing or a value cannot be parsed.
        TypeError: ``cls`` is not a dataclass or has a field of an unsupported type (a programming error).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = prefix + f.name.upper()
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = from_env(kind, name + "_", environ)
        elif name in environ:
            values[f.name] = _parser(kind)(name, environ[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{name} is required but not set.")
    try:
        return cls(**values)
    except ConfigError as exc:  # a __post_init__ check: say where the values came from
        raise ConfigError(f"{exc} (read from {prefix}* variables)") from None


def _parser(kind: Any) -> Callable[[str, str], Any]:
    """Return ``parse(variable_name, text)`` for a field type."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _parser(next(a for a in args if a is not type(None)))
        return lambda name, text: None if text.strip() == "" else inner(name, text)
    if typing.get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _parser(args[0])
        return lambda name, text: tuple(item(name, part.strip()) for part in text.split(",") if part.strip())
    if kind in _SCALARS:
        return _SCALARS[kind]
    raise TypeError(f"unsupported settings field type {kind!r}")


def _parse_str(name: str, text: str) -> str:
    return text


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}.") from None


def _parse_float(name: str, text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}.") from None


def _parse_bool(name: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ConfigError(f"{name} must be a boolean (1/0/true/false/yes/no), got {text!r}.")


_SCALARS: dict[Any, Callable[[str, str], Any]] = {
    str: _parse_str,
    int: _parse_int,
    float: _parse_float,
    bool: _parse_bool,
}
