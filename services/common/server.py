"""The one gRPC server bootstrap: every service's ``main`` ends in ``serve(...)``.

What every server gets here, so servicers contain only their own logic:

- ``grpc.health.v1``: NOT_SERVING until ``ready`` (model warm-up) returns, SERVING after, and NOT_SERVING
  again as soon as shutdown starts, for the overall status ("") and each service name;
- server reflection, v1 and v1alpha (grpcurl, grpcui, Postman) for the services, health and reflection;
- Prometheus metrics on their own HTTP port: ``tire_grpc_requests_total{service,method,code}`` and
  ``tire_grpc_request_seconds{service,method}``, plus process and GC collectors;
- error mapping, to the gRPC rich error model: a ``TireError`` aborts the call with its ``grpc_code``, its
  sentence as the status message, and a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer
  carrying ErrorInfo (its ``reason``), BadRequest (InvalidArgument's field) and RetryInfo (its
  ``retry_after_s``), as ``services.common.errors`` lays out; anything else is logged with its traceback
  and reported as INTERNAL, reason INTERNAL, without its text (internals never leak). A servicer's own
  ``context.abort`` keeps its code and message and gets ErrorInfo with the code's name as reason. Messages
  are cut to ``MAX_MESSAGE_BYTES``: status and details travel in HTTP/2 trailers, which clients refuse
  past about 8 KiB (a 2 MB message came back as RESOURCE_EXHAUSTED "received metadata size exceeds hard
  limit", the real error lost);
- one JSON log line per call (method, code, duration_ms; details and reason when it failed);
- graceful shutdown on SIGTERM/SIGINT: health goes NOT_SERVING, new calls are refused and in-flight
  calls get ``grace_s`` to finish.

``stream_progress`` runs long work in a thread and yields what it reports, for server-streaming calls
(the inpainter's FitSubject).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any, Generic, NoReturn, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from tire.v1 import common_pb2

from services.common.clients import KEEPALIVE_TIME_MS
from services.common.config import ServerSettings, file_stamp, from_env
from services.common.errors import (
    ERROR_DOMAIN,
    CallerGone,
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    TireError,
)
from services.common.kernel_cache import seed_kernel_cache
from services.common.logs import configure_logging
from services.common.store import MemoryStore, ObjectStore, StoreSettings

log = logging.getLogger(__name__)
S = TypeVar("S")
T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")

# Inference calls take seconds to minutes, well past prometheus_client's default top bucket (10 s).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# The most UTF-8 bytes of a status message (and of the BadRequest description, which repeats it). The
# message travels twice in the trailers: percent-encoded in grpc-message (3 bytes a non-ASCII byte) and
# in the base64 grpc-status-details-bin. At this size the two take 6.7 KiB at worst (non-ASCII text
# everywhere), under the 8 KiB gRPC clients accept without question (past it they start refusing, past
# 16 KiB always).
MAX_MESSAGE_BYTES = 1024
# The most UTF-8 bytes of a field path or an ErrorInfo metadata value.
_MAX_VALUE_BYTES = 256


@dataclass(frozen=True)
class ServiceSpec:
    """A gRPC service to host: its full name (``tire.v1.Renderer``) and how to add it to a server.

    ``asynchronous``: serve it with ``grpc.aio``, on an event loop of its own thread. Its ``async``
    methods (coroutines, async generators) then hold no thread while they wait, so that long streams
    cost memory only; its plain methods run on the ``max_workers`` thread pool as before.

    ``collector``: a Prometheus collector of the service's own gauges, added to the server's metrics.
    """

    name: str
    register: Callable[[grpc.Server], None]
    asynchronous: bool = False
    collector: Any = None


class RunningServer:
    """A started server (from ``start_server``). Health reports NOT_SERVING until ``set_serving``."""

    def __init__(
        self,
        stop_servers: Callable[[float], None],
        executor: futures.ThreadPoolExecutor,
        health_servicer: health.HealthServicer,
        names: Sequence[str],
        port: int,
        metrics: WSGIServer | None,
        grace_s: float,
    ):
        self._stop_servers = stop_servers  # stops the gRPC servers, giving in-flight calls the grace
        self._executor = executor
        self._metrics = metrics
        self._names = names
        self._grace_s = grace_s
        self.health = health_servicer
        self.port = port
        self.metrics_port: int | None = None if metrics is None else metrics.server_port
        self.health_port: int | None = None  # the plaintext health port, when there is one

    def set_serving(self, serving: bool = True) -> None:
        """Report SERVING (or NOT_SERVING) for "" and every service (ignored once shutdown has started)."""
        answer = health_pb2.HealthCheckResponse
        status = answer.SERVING if serving else answer.NOT_SERVING
        for name in ("", *self._names):
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully and wait: NOT_SERVING first, refuse new calls, give in-flight calls ``grace``
        seconds (default: the settings' ``grace_s``), then cancel what is left. Safe to call twice."""
        grace = self._grace_s if grace is None else grace
        log.info("stopping; in-flight calls get up to %s s", grace, extra={"grace_s": grace})
        self.health.enter_graceful_shutdown()
        self._stop_servers(grace)
        if self._metrics is not None:
            # shutdown() waits for the HTTP server's next poll (up to 0.5 s); nothing needs to wait for it.
            threading.Thread(target=_close_http, args=(self._metrics,), daemon=True).start()
        self._executor.shutdown(wait=False)
        log.info("stopped")


def _close_http(server: WSGIServer) -> None:
    server.shutdown()
    server.server_close()


def start_server(specs: Sequence[ServiceSpec] | ServiceSpec, settings: ServerSettings) -> RunningServer:
    """Start serving ``specs`` (health NOT_SERVING) and the metrics endpoint; return at once.

    Raises:
        RuntimeError: the gRPC port cannot be bound.
        OSError: the metrics port cannot be bound.
    """
    specs = (specs,) if isinstance(specs, ServiceSpec) else tuple(specs)
    names = tuple(spec.name for spec in specs)
    # A registry per server, not the global one, so several servers can run in one process (tests).
    registry = CollectorRegistry()
    for collector in (ProcessCollector, GCCollector, PlatformCollector):
        collector(registry=registry)
    for spec in specs:
        if spec.collector is not None:
            registry.register(spec.collector)

    tls = _tls_credentials(settings) if settings.tls_cert_file else None  # ConfigError before anything
    executor = futures.ThreadPoolExecutor(settings.max_workers, thread_name_prefix="grpc")
    health_servicer = health.HealthServicer()
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    start = _start_aio if any(spec.asynchronous for spec in specs) else _start_sync
    try:
        stop_servers, port, health_port = start(specs, settings, registry, tls, executor, health_servicer)
    except BaseException:
        executor.shutdown(wait=False)
        raise
    metrics = None
    if settings.metrics_port >= 0:
        try:
            metrics, _ = start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
        except BaseException:
            stop_servers(None)
            executor.shutdown(wait=False)
            raise
    running = RunningServer(stop_servers, executor, health_servicer, names, port, metrics, settings.grace_s)
    running.health_port = health_port
    security = (
        "mutual TLS" if settings.tls_client_ca_file else "TLS" if settings.tls_cert_file else "plaintext"
    )
    log.info(
        "serving %s on port %d, %s (metrics port %s)",
        ", ".join(names),
        port,
        security,
        running.metrics_port,
        extra={"port": port, "metrics_port": running.metrics_port, "security": security},
    )
    return running


_Started = tuple[Callable[[float | None], None], int, int | None]  # stop(grace), port, health port


def _start_sync(
    specs: Sequence[ServiceSpec],
    settings: ServerSettings,
    registry: CollectorRegistry,
    tls: grpc.ServerCredentials | None,
    executor: futures.ThreadPoolExecutor,
    health_servicer: health.HealthServicer,
) -> _Started:
    """The services on a ``grpc.server`` (each call holds a thread of ``executor``), and health alone in
    plaintext on ``settings.health_port`` when it is set."""
    names = tuple(spec.name for spec in specs)
    server = grpc.server(
        executor,
        interceptors=[_CallInterceptor(frozenset(names), registry)],
        options=_server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    health_server = None
    try:
        port, health_port = _populate(server, specs, settings, tls, health_servicer)
        if health_port is not None:
            # Health alone, in plaintext: what Kubernetes' gRPC probes (which cannot speak TLS) ask.
            health_server = grpc.server(executor, options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            health_port = health_server.add_insecure_port(_address(settings.host, settings.health_port))
    except BaseException:
        server.stop(None)
        raise
    if health_server is not None:
        health_server.start()
    server.start()

    def stop(grace: float | None) -> None:
        if health_server is not None:
            health_server.stop(grace)
        server.stop(grace).wait()

    return stop, port, health_port


def _start_aio(
    specs: Sequence[ServiceSpec],
    settings: ServerSettings,
    registry: CollectorRegistry,
    tls: grpc.ServerCredentials | None,
    executor: futures.ThreadPoolExecutor,
    health_servicer: health.HealthServicer,
) -> _Started:
    """The services on a ``grpc.aio`` server whose event loop runs in a thread of its own (``grpc-aio``);
    plain methods (health, reflection, unary calls) run on ``executor``, async ones on the loop."""
    names = tuple(spec.name for spec in specs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-aio", daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def close_loop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()

    async def start() -> tuple[list[grpc.aio.Server], int, int | None]:
        # aio objects belong to the loop's thread: they are made and started there.
        server = grpc.aio.server(
            migration_thread_pool=executor,
            interceptors=[_AioCallInterceptor(frozenset(names), registry)],
            options=_server_options(settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        )
        port, health_port = _populate(server, specs, settings, tls, health_servicer)
        servers = [server]
        if health_port is not None:
            health_server = grpc.aio.server(
                migration_thread_pool=executor, options=[("grpc.so_reuseport", 0)]
            )
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            health_port = health_server.add_insecure_port(_address(settings.host, settings.health_port))
            servers.append(health_server)
        for each in servers:
            await each.start()
        return servers, port, health_port

    try:
        servers, port, health_port = run(start())
    except BaseException:
        close_loop()
        raise

    async def stop_all(grace: float | None) -> None:
        await asyncio.gather(*(each.stop(grace) for each in reversed(servers)))

    def stop(grace: float | None) -> None:
        if loop.is_closed():  # once: RunningServer.stop may be called again
            return
        run(stop_all(grace))
        # A plain handler still on the pool (one that outlived the grace) ends through the loop: its
        # abort, its stream's writes wait there for a result. Let it finish before the loop stops, or
        # its thread would wait forever, and the pool's threads hold up the interpreter's exit.
        drain = threading.Thread(target=executor.shutdown, kwargs={"cancel_futures": True}, daemon=True)
        drain.start()
        drain.join(DRAIN_S)
        close_loop()

    return stop, port, health_port


DRAIN_S = 10.0
"""How long a stopping grpc.aio server waits for the plain handlers still running on its pool."""


def _populate(
    server: grpc.Server | grpc.aio.Server,
    specs: Sequence[ServiceSpec],
    settings: ServerSettings,
    tls: grpc.ServerCredentials | None,
    health_servicer: health.HealthServicer,
) -> tuple[int, int | None]:
    """Add health, the services and reflection to ``server`` and bind its port; return (the port, the
    health port asked for or None). Raises RuntimeError when the port cannot be bound."""
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for spec in specs:
        spec.register(server)
    _enable_reflection((*(spec.name for spec in specs), health.SERVICE_NAME), server)
    address = _address(settings.host, settings.port)
    port = server.add_secure_port(address, tls) if tls else server.add_insecure_port(address)
    return port, (settings.health_port if settings.health_port >= 0 else None)


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(names: Sequence[str], server: grpc.Server) -> None:
    """Server reflection, as ``grpc.reflection.v1`` (what current grpcurl and Postman ask first) and
    ``v1alpha``. grpcio-reflection serves only v1alpha; v1's messages are v1alpha's under another
    package, field for field, so the same servicer answers both."""
    servicer = reflection.ReflectionServicer((*names, REFLECTION_V1, reflection.SERVICE_NAME))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


def _tls_credentials(settings: ServerSettings) -> grpc.ServerCredentials:
    """TLS from the settings' PEM files, read again whenever one of them changes (checked at each new
    connection), so a renewed certificate (a Secret updated in place) is served without a restart.

    Raises:
        ConfigError: a file cannot be read.
    """
    paths = [settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file]

    def stamp() -> tuple:
        return tuple(file_stamp(path) for path in paths if path)

    def load() -> grpc.ServerCertificateConfiguration:
        try:
            cert, key, ca = (Path(path).read_bytes() if path else None for path in paths)
        except OSError as exc:
            raise ConfigError(f"cannot read the TLS file {exc.filename}: {exc.strerror}.") from None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    try:
        seen = [stamp()]
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS file {exc.filename}: {exc.strerror}.") from None

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            now = stamp()
            if now == seen[0]:
                return None  # unchanged: keep serving the current certificate
            config = load()
        except (OSError, ConfigError) as exc:  # mid-rotation: keep the current one
            log.warning("TLS files not read again: %s", exc)
            return None
        seen[0] = now
        log.info("TLS certificate read again")
        return config

    return grpc.dynamic_ssl_server_credentials(
        load(), fetch, require_client_authentication=bool(settings.tls_client_ca_file)
    )


def describe(
    service: str, backend: str, device: str, available: Iterable[str], settings: Any, model: str = ""
) -> common_pb2.DescribeResponse:
    """The ``Describe`` answer every servicer gives: its backend, model, device and settings.

    ``settings`` is the service's frozen settings dataclass; each field is reported as a string.
    """
    return common_pb2.DescribeResponse(
        service=service,
        backend=backend,
        model=model,
        version=version("tire-services"),
        device=device,
        available_backends=list(available),
        settings={
            f.name: str(getattr(settings, f.name))
            for f in dataclasses.fields(settings)
            if not f.metadata.get("secret")  # credentials are never reported
        },
    )


def serve(
    specs: Sequence[ServiceSpec] | ServiceSpec,
    settings: ServerSettings,
    *,
    ready: Callable[[], None] | None = None,
    available: Callable[[], bool] | None = None,
    shutdown: Callable[[], None] | None = None,
) -> None:
    """Run a service until SIGTERM or SIGINT; call from the main thread (signal handlers live there).

    Configures JSON logging, starts the server with health NOT_SERVING, runs ``ready`` (warm-up: load
    models, compile kernels), then reports SERVING. A signal (during warm-up too) starts a graceful
    shutdown of ``settings.grace_s``; a second signal kills the process at once. If ``ready`` raises,
    the server is stopped and the exception propagates, so the process exits non-zero.

    ``available``, when given, is asked every ``AVAILABILITY_CHECK_S`` after warm-up (a model served
    elsewhere, by Triton, can go away and come back): health follows its answer. ``shutdown``, when
    given, runs first when the service stops (the coordinator hands its job leases back).
    """
    specs = (specs,) if isinstance(specs, ServiceSpec) else tuple(specs)
    configure_logging(specs[0].name, settings.log_level)
    signals = _ShutdownSignals()
    running = start_server(specs, settings)
    try:
        if ready is not None:
            ready()
        signals.warm_up_done()
        running.set_serving()
        log.info("ready")
        if available is not None:
            threading.Thread(target=follow_availability, args=(available, running), daemon=True).start()
        signals.wait()  # raises _Shutdown
    except _Shutdown as exc:
        log.info("received %s", exc.signame, extra={"signal": exc.signame})
    finally:
        if shutdown is not None:
            try:
                shutdown()
            except Exception:
                log.exception("shutdown step failed")
        running.stop(settings.grace_s)


AVAILABILITY_CHECK_S = 5.0
"""How often a service whose models are served elsewhere asks whether they still are."""


def follow_availability(
    available: Callable[[], bool], running: RunningServer, every_s: float = AVAILABILITY_CHECK_S
) -> None:
    """Health follows ``available()``, asked every ``every_s`` seconds, forever (run it in a daemon
    thread after warm-up); changes are logged."""
    serving = True
    while True:
        time.sleep(every_s)
        now = available()
        if now != serving:
            log.warning("models %s", "available again: SERVING" if now else "unavailable: NOT_SERVING")
            running.set_serving(now)
            serving = now


def models_at(backend: Any, version: str) -> Any:
    """``backend`` held to model ``version`` ("": as configured), for a request's ``model_version``.

    Raises:
        InvalidArgument: a version for a backend whose models have none (no ``pinned``), or not digits.
    """
    if not version:
        return backend
    pinned = getattr(backend, "pinned", None)
    if pinned is None:
        raise InvalidArgument(
            "model_version", version, f"names a version, but {backend.name!r} models have none"
        )
    return pinned(version)


def wait_for_models(backend: Any, wait_s: float = 600.0) -> None:
    """Before warm-up: wait until a backend whose models are served elsewhere (it has ``ready()``:
    Triton) has a ready version; return at once for any other backend.

    Raises:
        FailedPrecondition: none was ready within ``wait_s`` seconds.
    """
    ready = getattr(backend, "ready", None)
    deadline = time.monotonic() + wait_s
    while ready is not None and not ready():
        if time.monotonic() > deadline:
            raise FailedPrecondition(f"Triton serves no ready version after {wait_s:.0f} s.")
        time.sleep(1.0)


def run_service(
    name: str,
    prefix: str,
    settings_type: type[S],
    build: Callable[[S, ObjectStore], Any],
    add_to_server: Callable[[Any, grpc.Server], None],
    warm_up: Callable[[Any], None],
    plaintext_allowed: Callable[[S], bool] = lambda settings: True,
    argv: Sequence[str] | None = None,
    asynchronous: bool = False,
) -> None:
    """The whole ``main`` of a service, from the environment to shutdown.

    Reads the service's settings dataclass and its ``ServerSettings`` from ``{prefix}*`` variables and
    the store from ``TIRE_S3_*``, builds the servicer with ``build(settings, store)``, and serves it
    with ``warm_up(servicer)`` as the readiness step. A bad or missing variable raises ``ConfigError``
    before anything listens.

    Args:
        name: the full gRPC service name, e.g. ``tire.v1.TrackerService``.
        prefix: the environment prefix, e.g. ``TIRE_TRACKER_``.
        settings_type: the service's frozen settings dataclass.
        build: makes the servicer (the same function in-process callers use).
        add_to_server: the generated ``add_<Service>Servicer_to_server``.
        warm_up: runs a tiny real call (JIT compilation, model load) before health says SERVING.
        plaintext_allowed: whether the settings let the service listen without TLS; when not, a missing
            ``{prefix}TLS_CERT_FILE`` is a ``ConfigError``.
        argv: the command's arguments (default ``sys.argv[1:]``): none, or ``--warm-up-only`` to run
            ``warm_up`` on an in-memory store and exit (an image's build compiles its kernels so; see
            ``services.common.kernel_cache``, whose seed a serving process copies first).
        asynchronous: serve with ``grpc.aio`` (``ServiceSpec.asynchronous``).

    A servicer whose backend has ``ready()`` (models served by Triton) is NOT_SERVING whenever that says
    no, after warm-up too.
    """
    settings = from_env(settings_type, prefix)
    server_settings = from_env(ServerSettings, prefix)
    configure_logging(name, server_settings.log_level)
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments == ["--warm-up-only"]:  # an image's build: compile the kernels into numba's cache
        warm_up(build(settings, MemoryStore()))
        return
    if arguments:
        raise ConfigError(
            f"{name} takes no arguments but --warm-up-only (settings are variables), got {arguments}."
        )
    seed_kernel_cache()
    if not server_settings.tls_cert_file and not plaintext_allowed(settings):
        raise ConfigError(
            f"{name} serves TLS only, and {prefix}TLS_CERT_FILE is not set: set it and "
            f"{prefix}TLS_KEY_FILE, or {prefix}ALLOW_PLAINTEXT=1 to serve plaintext (loopback, a mesh)."
        )
    servicer = build(settings, ObjectStore(StoreSettings.from_env()))
    serve(
        ServiceSpec(
            name,
            lambda server: add_to_server(servicer, server),
            asynchronous=asynchronous,
            collector=getattr(servicer, "collector", None),
        ),
        server_settings,
        ready=lambda: warm_up(servicer),
        available=getattr(getattr(servicer, "backend", None), "ready", None),
        shutdown=getattr(servicer, "shutdown", None),
    )


@dataclass(frozen=True)
class Finished(Generic[R]):
    """The last item of ``relay_progress``: what the work returned."""

    result: R


async def relay_progress(work: Callable[[Callable[[P], None]], R]) -> AsyncIterator[P | Finished[R]]:
    """Run ``work(report)`` in a thread of its own; yield each value it passes to ``report`` as it comes,
    then ``Finished(result)``. Between reports this waits on the event loop, holding no thread (a
    long fit streams its progress from a ``grpc.aio`` server so).

    An exception of ``work`` is raised here. When the caller stops iterating (the client went away and
    gRPC cancelled the stream), the next ``report`` raises ``CallerGone`` in the worker, which ends the
    work at its next report.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def report(value: P) -> None:
        if stop.is_set():
            raise CallerGone("the caller went away")
        loop.call_soon_threadsafe(events.put_nowait, ("progress", value))

    def run() -> None:
        try:
            outcome = ("done", work(report))
        except BaseException as exc:  # handed to the caller, which raises it
            outcome = ("failed", exc)
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for it
            loop.call_soon_threadsafe(events.put_nowait, outcome)

    threading.Thread(target=run, name="relay-progress", daemon=True).start()
    try:
        while True:
            kind, value = await events.get()
            if kind == "progress":
                yield value
            elif kind == "done":
                yield Finished(value)
                return
            else:
                raise value
    finally:
        stop.set()


def iterate(stream: AsyncIterator[T]) -> Iterator[T]:
    """The items of an async iterator for synchronous code (an in-process caller of an async method,
    such as ``InProcessStub``): each item is awaited on an event loop of this iterator's own."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(stream))
            except StopAsyncIteration:
                return
    finally:
        with contextlib.suppress(RuntimeError):  # the stream was already closed
            loop.run_until_complete(stream.aclose())  # type: ignore[attr-defined]
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class _Shutdown(BaseException):
    """Raised by the signal handler in the main thread; a BaseException so ``except Exception`` in
    warm-up code cannot swallow it."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


class _ShutdownSignals:
    """SIGTERM and SIGINT, handled in the main thread: during warm-up the handler raises ``_Shutdown``
    at once (warm-up is Python code that a signal must cut short); after it, the handler only records
    the signal, and ``wait`` raises it. Raising from a handler at an arbitrary point could leave a lock
    held (the logging handler's, mid-"ready"), and a signal that the kernel hands to another thread
    never wakes a main thread blocked on a lock, so ``wait`` sleeps in short steps instead."""

    POLL_S = 0.2

    def __init__(self) -> None:
        self._warming_up = True
        self._received: str | None = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def warm_up_done(self) -> None:
        self._warming_up = False

    def wait(self) -> NoReturn:
        """Return never: raise ``_Shutdown`` once a signal has arrived."""
        while self._received is None:
            time.sleep(self.POLL_S)
        raise _Shutdown(self._received)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Back to the defaults, so a second signal ends a shutdown that hangs.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        self._received = signal.Signals(signum).name
        if self._warming_up:
            raise _Shutdown(self._received)


def _server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Closing connections periodically makes clients re-resolve DNS, so new pods get traffic;
        # calls in flight on a closing connection get the shutdown grace to finish.
        ("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", round(settings.grace_s * 1000)),
        # Accept the client factory's keepalive pings (idle connections included); the default minimum
        # interval (5 min) would answer them with GOAWAY "too_many_pings".
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        # gRPC Python enables SO_REUSEPORT by default: a second server on a taken port would silently
        # share it instead of failing.
        ("grpc.so_reuseport", 0),
    ]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class _TrackedContext:
    """The servicer's context, noting the status the call ends with: whether the servicer aborted it
    itself (so its status is kept rather than replaced by INTERNAL), and with which code and details.

    It wraps a ``grpc.server``'s context or a ``grpc.aio`` server's context of a plain method; the
    latter has no ``abort_with_status`` and no getters for the code, hence the bookkeeping here.
    """

    def __init__(self, context: Any):
        self._context = context
        self.aborted = False
        self.reason = ""  # ErrorInfo's reason, once the call is aborted with one
        self.status_code: grpc.StatusCode | None = None
        self.status_details = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status_code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self.status_details = details
        self._context.set_details(details)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        """A servicer's own abort: its code and message (cut to size), with ErrorInfo(code's name)."""
        if code is grpc.StatusCode.OK:  # gRPC fails the call as UNKNOWN without details
            self.aborted = True
            self._context.abort(code, details)  # raises
        self.abort_with_reason(code, details or "", code.name)

    def abort_with_status(self, status: grpc.Status) -> None:
        self.aborted = True
        self.status_code, self.status_details = status.code, status.details
        if hasattr(self._context, "abort_with_status"):
            self._context.abort_with_status(status)
        self._context.abort(status.code, status.details, status.trailing_metadata)  # grpc.aio's

    def abort_with_reason(self, code: grpc.StatusCode, message: str, reason: str, **details: Any) -> None:
        """Abort with the rich status ``_rich_status(code, message, reason, **details)``."""
        self.reason = reason
        self.abort_with_status(_rich_status(code, message, reason, **details))


class _CallInterceptor(grpc.ServerInterceptor):
    """Error mapping, metrics and the per-call log line for the hosted services' methods.

    Health and reflection are left alone: probes would flood the log, and the health servicer's
    non-blocking Watch depends on its handler attributes, which wrapping would hide.
    """

    def __init__(self, services: frozenset[str], registry: CollectorRegistry, asynchronous: bool = False):
        self._services = services
        self.asynchronous = asynchronous  # on a grpc.aio server, where async methods can run
        self._requests = Counter(
            "tire_grpc_requests", "gRPC calls handled.", ["service", "method", "code"], registry=registry
        )
        # Calls being handled now: the signal to scale a GPU stage on (through a Prometheus adapter and
        # the HPA), since a busy GPU pod's CPU use says little.
        self._in_flight = Gauge(
            "tire_grpc_requests_in_flight",
            "gRPC calls being handled.",
            ["service", "method"],
            registry=registry,
        )
        self._seconds = Histogram(
            "tire_grpc_request_seconds",
            "Time to handle a gRPC call, to the end of its response stream.",
            ["service", "method"],
            registry=registry,
            buckets=_BUCKETS,
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        return self.wrap(continuation(handler_call_details), handler_call_details)

    def wrap(
        self, handler: grpc.RpcMethodHandler | None, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` with its behaviour wrapped (a hosted service's method), else as it is."""
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler is None or service not in self._services:
            return handler
        behavior = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        )
        if inspect.isasyncgenfunction(behavior) or inspect.iscoroutinefunction(behavior):
            if not self.asynchronous:
                raise TypeError(
                    f"/{service}/{method} is an async method on a grpc.server: serve {service} with "
                    "ServiceSpec(asynchronous=True)"
                )
            wrap = self._wrap_async_stream if inspect.isasyncgenfunction(behavior) else self._wrap_async_unary
        else:
            wrap = self._wrap_stream if handler.response_streaming else self._wrap_unary
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return factory(
            wrap(behavior, service, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_unary(self, behavior: Callable, service: str, method: str) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            tracked, start = _TrackedContext(context), time.perf_counter()
            self._in_flight.labels(service, method).inc()
            try:
                return behavior(request, tracked)
            except Exception as exc:
                _fail(exc, tracked, f"/{service}/{method}")
            finally:
                self._record(service, method, tracked, start)

        return handle

    def _wrap_stream(self, behavior: Callable, service: str, method: str) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            tracked, start = _TrackedContext(context), time.perf_counter()
            self._in_flight.labels(service, method).inc()
            try:
                yield from behavior(request, tracked)
            except Exception as exc:
                _fail(exc, tracked, f"/{service}/{method}")
            finally:  # also when gRPC closes the generator because the client left
                self._record(service, method, tracked, start)

        return handle

    def _wrap_async_unary(self, behavior: Callable, service: str, method: str) -> Callable:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            tracked, start = _TrackedContext(context), time.perf_counter()
            self._in_flight.labels(service, method).inc()
            try:
                return await behavior(request, context)
            except Exception as exc:
                await _fail_async(exc, tracked, f"/{service}/{method}")
            finally:
                self._record(service, method, tracked, start)

        return handle

    def _wrap_async_stream(self, behavior: Callable, service: str, method: str) -> Callable:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            tracked, start = _TrackedContext(context), time.perf_counter()
            self._in_flight.labels(service, method).inc()
            try:
                async for response in behavior(request, context):
                    yield response
            except Exception as exc:
                await _fail_async(exc, tracked, f"/{service}/{method}")
            finally:  # also when the client leaves: the loop cancels this task
                self._record(service, method, tracked, start)

        return handle

    def _record(self, service: str, method: str, context: _TrackedContext, start: float) -> None:
        """Count and log a finished call."""
        self._in_flight.labels(service, method).dec()
        seconds = time.perf_counter() - start
        code = _final_code(context)
        self._requests.labels(service, method, code.name).inc()
        self._seconds.labels(service, method).observe(seconds)
        extra: dict[str, Any] = {
            "method": f"/{service}/{method}",
            "code": code.name,
            "duration_ms": round(seconds * 1000, 3),
        }
        if code is not grpc.StatusCode.OK and context.status_details:
            extra["details"] = context.status_details
        if code is not grpc.StatusCode.OK and context.reason:
            extra["reason"] = context.reason
        log.info("%s %s %.1f ms", extra["method"], code.name, extra["duration_ms"], extra=extra)


class _AioCallInterceptor(grpc.aio.ServerInterceptor):
    """``_CallInterceptor`` on a ``grpc.aio`` server: the same wrapping, metrics and log line."""

    def __init__(self, services: frozenset[str], registry: CollectorRegistry):
        self._calls = _CallInterceptor(services, registry, asynchronous=True)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        return self._calls.wrap(await continuation(handler_call_details), handler_call_details)


def _final_code(context: _TrackedContext) -> grpc.StatusCode:
    """The status a call ends with: the one set on it, else OK, unless the client has gone (a handler
    outliving the deadline, or a stream the client stopped reading)."""
    if context.status_code is not None:
        return context.status_code
    inner = context._context
    gone = (hasattr(inner, "is_active") and not inner.is_active()) or (
        hasattr(inner, "cancelled") and inner.cancelled()
    )
    if not gone:
        return grpc.StatusCode.OK
    remaining = inner.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _failure_status(exc: Exception, rpc: str) -> tuple[grpc.Status, str]:
    """(status, ErrorInfo reason) for an exception out of a servicer: a TireError's code and details;
    anything else, logged here, INTERNAL."""
    if isinstance(exc, TireError):
        status = _rich_status(
            exc.grpc_code,
            str(exc),
            exc.reason,
            metadata=exc.metadata,
            field=exc.field if isinstance(exc, InvalidArgument) else None,
            retry_after_s=exc.retry_after_s,
        )
        return status, exc.reason
    log.error("unhandled error in %s", rpc, exc_info=exc, extra={"method": rpc})
    message = f"internal error in {rpc}; see the service log"
    return _rich_status(grpc.StatusCode.INTERNAL, message, TireError.reason), TireError.reason


def _fail(exc: Exception, context: _TrackedContext, rpc: str) -> None:
    """End the call for an exception out of a servicer, always by raising: keep a servicer's own abort,
    else abort with ``_failure_status``."""
    if context.aborted:
        raise exc
    status, context.reason = _failure_status(exc, rpc)
    context.abort_with_status(status)


async def _fail_async(exc: Exception, context: _TrackedContext, rpc: str) -> None:
    """``_fail`` for an async method: its own ``await context.abort(...)`` raised ``AbortError`` and
    is kept."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    status, context.reason = _failure_status(exc, rpc)
    context.aborted, context.status_code, context.status_details = True, status.code, status.details
    await context._context.abort(status.code, status.details, status.trailing_metadata)


def _rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    *,
    metadata: dict[str, str] | None = None,
    field: str | None = None,
    retry_after_s: float | None = None,
) -> grpc.Status:
    """A call's status in the gRPC rich error model: ``code``, ``message`` (cut to MAX_MESSAGE_BYTES)
    and a ``google.rpc.Status`` with ErrorInfo(reason, ERROR_DOMAIN, metadata), then BadRequest with one
    FieldViolation(field, message) when ``field`` is given, then RetryInfo when ``retry_after_s`` is."""
    message = _shorten(message, MAX_MESSAGE_BYTES)
    status = status_pb2.Status(code=code.value[0], message=message)
    info = error_details_pb2.ErrorInfo(
        reason=reason,
        domain=ERROR_DOMAIN,
        metadata={key: _shorten(value, _MAX_VALUE_BYTES) for key, value in (metadata or {}).items()},
    )
    status.details.add().Pack(info)
    if field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_shorten(field, _MAX_VALUE_BYTES), description=message
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    if retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(round(retry_after_s * 1e9))
        status.details.add().Pack(retry)
    return rpc_status.to_status(status)


def _shorten(text: str, limit: int) -> str:
    """``text`` as at most ``limit`` UTF-8 bytes, cut at a character boundary with "..." marking the cut;
    characters UTF-8 cannot hold (lone surrogates) become "?"."""
    data = text.encode(errors="replace")
    if len(data) > limit:
        data = data[: limit - 3] + b"..."
    return data.decode(errors="ignore")
