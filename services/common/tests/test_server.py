"""The server bootstrap, client factory, settings and logging, against a raw-bytes test service.

The project's protos are not needed: ``test.Echo`` is a generic handler with identity serializers.
Its request bytes choose what the handler does (``b"invalid"`` raises InvalidArgument, ...). Failed
calls are read back as an integrator reads them: code, message, and the ``google.rpc.Status`` of the
``grpc-status-details-bin`` trailer (``grpc_status.rpc_status.from_call``). The TLS
tests make throw-away certificate authorities with the ``openssl`` CLI (``pki.Pki``) and skip without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from tire.v1 import common_pb2

from services.client import Credentials, coordinator_stub
from services.common import clients, validation
from services.common.clients import dial, service_config, wait_ready
from services.common.config import ServerSettings, from_env
from services.common.errors import (
    ERROR_DOMAIN,
    CallerGone,
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ObjectNotFound,
    StepFailed,
    StoreUnavailable,
    TireError,
)
from services.common.local_server import free_port
from services.common.logs import configure_logging
from services.common.server import (
    MAX_MESSAGE_BYTES,
    Finished,
    RunningServer,
    ServiceSpec,
    follow_availability,
    iterate,
    relay_progress,
    start_server,
)
from services.coordinator.auth import new_token, token_entry
from services.testing.pki import Issued, Pki

SERVICE = "test.Echo"
ROOT = Path(__file__).resolve().parents[3]
HUGE = 2_000_000  # characters: far past what gRPC trailers hold (about 8 KiB)
# Errors built from 2 MB values, by request.
HUGE_ERRORS = {
    # The value is quoted short (errors._quote): the sentence stays short.
    b"huge-value": lambda: InvalidArgument(
        "spec.asset.frames[0].uri", "s3://b/" + "k" * HUGE, "must be short"
    ),
    # A message built without _quote: nothing short about it.
    b"huge-message": lambda: InvalidArgument("spec.name", "?", f"must not be {'n' * HUGE}"),
    # Non-ASCII (3 bytes a byte in grpc-message), in the field too: cut where a character ends.
    b"huge-emoji": lambda: InvalidArgument("spec." + "é" * HUGE, "?", f"must not be {'😀' * HUGE}"),
}


class EchoServicer:
    """Echo returns its request; Count streams b"0", b"1", ... up to the number in the request."""

    def __init__(self) -> None:
        self.attempts = 0
        self.started = threading.Event()

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"invalid":
            raise InvalidArgument("width", 0, "must be positive")
        if request == b"bad-uri":
            raise InvalidArgument("spec.asset.frames[0].uri", "s3://b", "must be an object URI like s3://b/k")
        if request in HUGE_ERRORS:
            raise HUGE_ERRORS[request]()
        if request == b"missing":
            raise ObjectNotFound("no object at s3://bucket/key.")
        if request == b"bug":
            raise RuntimeError("secret internals")
        if request == b"abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        if request in (b"slow", b"slow-invalid"):
            self.started.set()
            time.sleep(0.5)
        if request == b"slow-invalid":
            raise InvalidArgument("width", 0, "must be positive")
        if request == b"flaky":
            self.attempts += 1
            if self.attempts <= 2:
                raise StoreUnavailable("the store cannot be reached; try again.")
        return request

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        n, _, failure = request.partition(b":")
        for i in range(int(n)):
            yield str(i).encode()
        if failure == b"invalid":
            raise InvalidArgument("frames", int(n), "must be even")
        if failure == b"bug":
            raise RuntimeError("secret internals")


def echo_spec(servicer: EchoServicer) -> ServiceSpec:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(servicer.echo),
            "Count": grpc.unary_stream_rpc_method_handler(servicer.count),
        },
    )
    return ServiceSpec(name=SERVICE, register=lambda server: server.add_generic_rpc_handlers((handler,)))


LOCAL = ServerSettings(port=0, host="127.0.0.1", metrics_port=0, grace_s=1.0)


@pytest.fixture
def servicer() -> EchoServicer:
    return EchoServicer()


@pytest.fixture(params=[False, True], ids=["grpc", "grpc.aio"])
def server(servicer: EchoServicer, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The echo service on a ``grpc.server``, and on a ``grpc.aio`` one (its plain methods on the pool)."""
    running = start_server(dataclasses.replace(echo_spec(servicer), asynchronous=request.param), LOCAL)
    yield running
    running.stop(0)


@pytest.fixture
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with dial(f"127.0.0.1:{server.port}", retries=0) as ch:
        yield ch


def echo(channel: grpc.Channel, request: bytes) -> bytes:
    return channel.unary_unary(f"/{SERVICE}/Echo")(request, timeout=5)


def count(channel: grpc.Channel, request: bytes) -> Iterator[bytes]:
    return channel.unary_stream(f"/{SERVICE}/Count")(request, timeout=5)


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value


DETAIL_TYPES = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo)


def error_details(err: grpc.RpcError) -> dict[str, Message]:
    """The failed call's ``google.rpc.Status`` details by type name (``from_call`` also checks that the
    Status's code and message are the call's)."""
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin trailer"
    details: dict[str, Message] = {}
    for packed in status.details:
        (kind,) = [kind for kind in DETAIL_TYPES if packed.Is(kind.DESCRIPTOR)]
        details[kind.DESCRIPTOR.name] = detail = kind()
        packed.Unpack(detail)
    assert len(details) == len(status.details), "a detail type twice"
    return details


# --- health, reflection, metrics ---------------------------------------------------------------------


def test_health_is_not_serving_until_ready(server: RunningServer, channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    status = lambda name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
    assert status("") == status(SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    server.set_serving()
    assert status("") == status(SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_health_follows_models_served_elsewhere_after_warm_up(
    server: RunningServer, channel: grpc.Channel
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    status = lambda: stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status
    ready = threading.Event()
    ready.set()
    server.set_serving()
    threading.Thread(target=follow_availability, args=(ready.is_set, server, 0.02), daemon=True).start()

    def becomes(expected: int) -> bool:
        deadline = time.monotonic() + 5
        while status() != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return status() == expected

    ready.clear()  # Triton lost its models
    assert becomes(health_pb2.HealthCheckResponse.NOT_SERVING)
    ready.set()  # and has them again
    assert becomes(health_pb2.HealthCheckResponse.SERVING)


def test_the_container_healthcheck_passes_only_while_serving(server: RunningServer) -> None:
    # As compose runs it: a process of its own, exit status 0 (healthy) or 1.
    def healthcheck() -> int:
        command = [sys.executable, "-m", "services.common.healthcheck", f"127.0.0.1:{server.port}"]
        return subprocess.run(command, cwd=ROOT, capture_output=True, timeout=60).returncode

    assert healthcheck() == 1  # warming up
    server.set_serving()
    assert healthcheck() == 0
    server.stop(0)
    assert healthcheck() == 1  # gone


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_services_and_describes_them(channel: grpc.Channel, version: str) -> None:
    # v1's messages are v1alpha's field for field: the v1alpha classes speak v1 on the wire.
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = call(iter([listing]), timeout=5)
    names = {s.name for s in response.list_services_response.service}
    assert names == {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    health = reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health")
    (response,) = call(iter([health]), timeout=5)
    assert (
        response.file_descriptor_response.file_descriptor_proto
    )  # the descriptor a client builds calls from


def test_metrics_count_calls_by_method_and_code(server: RunningServer, channel: grpc.Channel) -> None:
    echo(channel, b"hi")
    rpc_error(echo, channel, b"invalid")
    assert list(count(channel, b"2")) == [b"0", b"1"]
    # An explicit opener without proxies: loopback must not go through an http_proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    calls = lambda method, code: samples.get(
        ("tire_grpc_requests_total", (("code", code), ("method", method), ("service", SERVICE)))
    )
    assert calls("Echo", "OK") == calls("Echo", "INVALID_ARGUMENT") == calls("Count", "OK") == 1
    assert samples[("tire_grpc_request_seconds_count", (("method", "Echo"), ("service", SERVICE)))] == 2
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


def test_metrics_gauge_the_calls_in_flight(
    server: RunningServer, servicer: EchoServicer, channel: grpc.Channel
) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def in_flight() -> float:
        text = opener.open(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "tire_grpc_requests_in_flight" and s.labels["method"] == "Echo"
        )

    slow = threading.Thread(target=echo, args=(channel, b"slow"))
    slow.start()
    assert servicer.started.wait(5)
    assert in_flight() == 1
    slow.join()
    rpc_error(echo, channel, b"invalid")
    deadline = time.monotonic() + 5  # grpc.aio may send the status before the handler's bookkeeping
    while in_flight() != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert in_flight() == 0


def test_metrics_can_be_disabled(servicer: EchoServicer) -> None:
    running = start_server(echo_spec(servicer), ServerSettings(port=0, host="127.0.0.1", metrics_port=-1))
    try:
        assert running.metrics_port is None
    finally:
        running.stop(0)


# --- error mapping -----------------------------------------------------------------------------------


def test_invalid_argument(channel: grpc.Channel) -> None:
    err = rpc_error(echo, channel, b"invalid")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "`width` must be positive, got 0."


def test_invalid_argument_names_its_field_in_bad_request_and_error_info(channel: grpc.Channel) -> None:
    err = rpc_error(echo, channel, b"bad-uri")
    sentence = "`spec.asset.frames[0].uri` must be an object URI like s3://b/k, got 's3://b'."
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, sentence)
    details = error_details(err)
    assert set(details) == {"ErrorInfo", "BadRequest"}  # no RetryInfo: the same request fails again
    (violation,) = details["BadRequest"].field_violations
    assert (violation.field, violation.description) == ("spec.asset.frames[0].uri", sentence)
    info = details["ErrorInfo"]
    assert (info.reason, info.domain) == ("INVALID_FIELD", ERROR_DOMAIN) == ("INVALID_FIELD", "tire.v1")
    assert dict(info.metadata) == {"field": "spec.asset.frames[0].uri"}


def test_not_found(channel: grpc.Channel) -> None:
    err = rpc_error(echo, channel, b"missing")
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "no object at s3://bucket/key.")
    details = error_details(err)
    assert set(details) == {"ErrorInfo"}
    assert (details["ErrorInfo"].reason, details["ErrorInfo"].domain) == ("OBJECT_NOT_FOUND", "tire.v1")


def test_unavailable_says_when_to_retry(channel: grpc.Channel) -> None:
    err = rpc_error(echo, channel, b"flaky")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    details = error_details(err)
    assert details["ErrorInfo"].reason == "STORE_UNAVAILABLE"
    assert details["RetryInfo"].retry_delay.ToTimedelta().total_seconds() == StoreUnavailable.retry_after_s
    assert StoreUnavailable.retry_after_s == 1.0


@pytest.mark.parametrize("request_", [b"bad-uri", b"missing", b"flaky"])
def test_a_client_reads_a_remote_errors_details_as_those_of_the_error_raised_in_process(
    channel: grpc.Channel, request_: bytes
) -> None:
    remote = clients.error_details(rpc_error(echo, channel, request_))
    with pytest.raises(TireError) as raised:
        EchoServicer().echo(request_, None)
    assert remote == clients.error_details(raised.value)
    assert remote.reason == raised.value.reason


def test_a_call_that_reached_no_server_has_empty_details() -> None:
    with grpc.insecure_channel(f"127.0.0.1:{free_port()}") as nowhere:
        err = rpc_error(echo, nowhere, b"hello")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert clients.error_details(err) == clients.ErrorDetails()


@pytest.mark.parametrize("request_", list(HUGE_ERRORS))
def test_a_message_built_from_megabytes_arrives_cut_with_its_code(
    channel: grpc.Channel, request_: bytes
) -> None:
    err = rpc_error(echo, channel, request_)
    # Not RESOURCE_EXHAUSTED "received metadata size exceeds hard limit": the real error arrives.
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    message, sentence = err.details(), str(HUGE_ERRORS[request_]())
    if len(sentence.encode()) <= MAX_MESSAGE_BYTES:
        assert message == sentence and len(message) < 300
    else:  # the sentence's start, up to a character's end, then "..."
        assert message.endswith("...") and sentence.startswith(message.removesuffix("..."))
        assert MAX_MESSAGE_BYTES - 4 <= len(message.encode()) <= MAX_MESSAGE_BYTES
    details = error_details(err)
    (violation,) = details["BadRequest"].field_violations
    assert violation.description == message and violation.field.startswith("spec.")
    assert (
        len(violation.field.encode()) <= 256 and len(details["ErrorInfo"].metadata["field"].encode()) <= 256
    )


def test_unexpected_error_is_internal_and_logged(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    err = rpc_error(echo, channel, b"bug")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal error in /test.Echo/Echo; see the service log"
    details = error_details(err)
    assert set(details) == {"ErrorInfo"}
    assert (details["ErrorInfo"].reason, dict(details["ErrorInfo"].metadata)) == ("INTERNAL", {})
    assert b"secret" not in rpc_status.from_call(err).SerializeToString()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert isinstance(record.exc_info[1], RuntimeError)


def test_servicer_abort_is_kept(channel: grpc.Channel) -> None:
    err = rpc_error(echo, channel, b"abort")
    assert (err.code(), err.details()) == (grpc.StatusCode.PERMISSION_DENIED, "not yours")
    assert error_details(err)["ErrorInfo"].reason == "PERMISSION_DENIED"


class AsyncEchoServicer:
    """Echo and Count as ``async`` methods; Count of b"wait" holds its stream open until ``release``."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"invalid":
            raise InvalidArgument("width", 0, "must be positive")
        if request == b"bug":
            raise RuntimeError("secret internals")
        if request == b"abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        return request

    async def count(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        if request == b"wait":
            self.release = self.release or asyncio.Event()
            yield b"open"
            await self.release.wait()
            return
        n, _, failure = request.partition(b":")
        for i in range(int(n)):
            yield str(i).encode()
            await asyncio.sleep(0)
        if failure == b"invalid":
            raise InvalidArgument("frames", int(n), "must be even")


@pytest.fixture
def async_channel() -> Iterator[grpc.Channel]:
    """A grpc.aio server of async methods, with a pool of 2 threads, and a channel to it."""
    servicer = AsyncEchoServicer()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(servicer.echo),
            "Count": grpc.unary_stream_rpc_method_handler(servicer.count),
        },
    )
    spec = ServiceSpec(SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)), asynchronous=True)
    running = start_server(spec, dataclasses.replace(LOCAL, max_workers=2))
    with dial(f"127.0.0.1:{running.port}", retries=0) as ch:
        yield ch
    running.stop(0)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["grpc", "grpc.aio"])
def test_a_server_at_its_call_limit_refuses_at_once(servicer: EchoServicer, asynchronous: bool) -> None:
    """One call in progress of at most one: the next is refused with RESOURCE_EXHAUSTED, at once and
    without the rich status of our own errors (what the coordinator's retry takes for a busy replica)."""
    spec = dataclasses.replace(echo_spec(servicer), asynchronous=asynchronous)
    running = start_server(spec, dataclasses.replace(LOCAL, max_workers=1, max_concurrent_rpcs=1))
    try:
        with dial(f"127.0.0.1:{running.port}", retries=0) as ch:
            slow = ch.unary_unary(f"/{SERVICE}/Echo").future(b"slow", timeout=5)
            assert servicer.started.wait(5)
            start = time.monotonic()
            err = rpc_error(echo, ch, b"hi")
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - start < 0.4
            assert not any(key == "grpc-status-details-bin" for key, _ in err.trailing_metadata() or ())
            assert slow.result() == b"slow" and echo(ch, b"hi") == b"hi"
    finally:
        running.stop(0)


def test_a_grpc_aio_server_stops_after_its_plain_handlers_end(
    servicer: EchoServicer, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain handler that fails after the stop began ends its call through the event loop: the loop
    stays up until it has (else its pool thread waits on a stopped loop forever, and so does the
    interpreter's exit)."""
    running = start_server(dataclasses.replace(echo_spec(servicer), asynchronous=True), LOCAL)
    with (
        caplog.at_level(logging.INFO, logger="services.common.server"),
        dial(f"127.0.0.1:{running.port}") as ch,
    ):
        call = ch.unary_unary(f"/{SERVICE}/Echo").future(b"slow-invalid", timeout=10)
        assert servicer.started.wait(5)
        running.stop(0)
        logged = [r for r in caplog.records if getattr(r, "method", None) == "/test.Echo/Echo"]
        assert [r.code for r in logged] == ["INVALID_ARGUMENT"]  # ended before stop returned
        assert call.exception() is not None


def test_async_methods_map_errors_as_plain_ones_do(async_channel: grpc.Channel) -> None:
    assert echo(async_channel, b"hi") == b"hi"
    assert list(count(async_channel, b"3")) == [b"0", b"1", b"2"]
    err = rpc_error(echo, async_channel, b"invalid")
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "`width` must be positive, got 0.",
    )
    assert error_details(err)["BadRequest"].field_violations[0].field == "width"
    err = rpc_error(echo, async_channel, b"bug")
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INTERNAL,
        "internal error in /test.Echo/Echo; see the service log",
    )
    assert rpc_error(echo, async_channel, b"abort").code() == grpc.StatusCode.PERMISSION_DENIED
    received = []
    with pytest.raises(grpc.RpcError) as info:
        received.extend(count(async_channel, b"2:invalid"))
    assert received == [b"0", b"1"] and info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_open_async_streams_hold_no_thread(async_channel: grpc.Channel) -> None:
    """50 streams wait on a server of 2 threads; unary calls still answer at once."""
    streams = [count(async_channel, b"wait") for _ in range(50)]
    try:
        assert all(next(stream) == b"open" for stream in streams)
        start = time.monotonic()
        assert [echo(async_channel, str(i).encode()) for i in range(10)] == [
            str(i).encode() for i in range(10)
        ]
        assert time.monotonic() - start < 1.0
    finally:
        for stream in streams:
            stream.cancel()


@pytest.mark.parametrize(
    ("failure", "code", "reason"),
    [
        (b"invalid", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
        (b"bug", grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_error_mid_stream(channel: grpc.Channel, failure: bytes, code: grpc.StatusCode, reason: str) -> None:
    received = []
    with pytest.raises(grpc.RpcError) as info:
        received.extend(count(channel, b"2:" + failure))
    assert received == [b"0", b"1"]
    assert info.value.code() == code
    assert "secret" not in info.value.details()
    details = error_details(info.value)
    assert details["ErrorInfo"].reason == reason
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        (violation,) = details["BadRequest"].field_violations
        assert (violation.field, violation.description) == ("frames", "`frames` must be even, got 2.")


def test_a_failed_call_logs_its_reason(channel: grpc.Channel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="services.common.server"):
        rpc_error(echo, channel, b"missing")
        deadline = time.monotonic() + 5  # grpc.aio may send the status before the handler's line
        while time.monotonic() < deadline and not any(
            getattr(r, "method", None) == "/test.Echo/Echo" for r in caplog.records
        ):
            time.sleep(0.01)
    (record,) = [r for r in caplog.records if getattr(r, "method", None) == "/test.Echo/Echo"]
    assert (record.code, record.reason) == ("NOT_FOUND", "OBJECT_NOT_FOUND")


def test_reasons_default_to_the_code_and_are_inherited() -> None:
    class OwnCode(TireError):  # as a stage's contract module writes one (the inpainter's InvalidSubject)
        grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    class Narrower(ObjectNotFound):
        pass

    class Renamed(NotFound):
        reason = "JOB_NOT_FOUND"

    assert OwnCode.reason == "INVALID_ARGUMENT" and Narrower.reason == "OBJECT_NOT_FOUND"
    assert (Renamed.reason, NotFound.reason, TireError.reason) == ("JOB_NOT_FOUND", "NOT_FOUND", "INTERNAL")
    assert ConfigError.reason == "INVALID_CONFIG" and FailedPrecondition.reason == "FAILED_PRECONDITION"
    assert StepFailed("s: UNAVAILABLE: x", grpc.StatusCode.UNAVAILABLE).reason == "STEP_FAILED"
    assert StepFailed("s").retry_after_s is None  # the coordinator spent its retries already


def test_one_log_line_per_call(channel: grpc.Channel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="services.common.server"):
        echo(channel, b"hi")
    (record,) = [r for r in caplog.records if getattr(r, "method", None) == "/test.Echo/Echo"]
    assert record.code == "OK" and record.duration_ms >= 0


# --- shutdown and retries ----------------------------------------------------------------------------


def test_graceful_stop_finishes_in_flight_calls(servicer: EchoServicer) -> None:
    running = start_server(echo_spec(servicer), LOCAL)
    with dial(f"127.0.0.1:{running.port}", retries=0) as ch:
        in_flight = ch.unary_unary(f"/{SERVICE}/Echo").future(b"slow", timeout=5)
        assert servicer.started.wait(5)
        running.stop(grace=5)
        assert in_flight.result() == b"slow"
        assert rpc_error(echo, ch, b"late").code() == grpc.StatusCode.UNAVAILABLE
    check = running.health.Check(health_pb2.HealthCheckRequest(service=SERVICE), None)
    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_client_retries_unavailable(server: RunningServer, servicer: EchoServicer) -> None:
    with dial(f"127.0.0.1:{server.port}", retries=4) as ch:
        assert echo(ch, b"flaky") == b"flaky"
    assert servicer.attempts == 3


def test_client_without_retries_fails(channel: grpc.Channel, servicer: EchoServicer) -> None:
    assert rpc_error(echo, channel, b"flaky").code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts == 1


def test_service_config() -> None:
    config = service_config(retries=9, timeout_s=2.5)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert method["retryPolicy"]["maxAttempts"] == 5
    assert method["timeout"] == "2.500s"
    assert "retryPolicy" not in service_config(retries=0, timeout_s=None)["methodConfig"][0]


def test_wait_ready(server: RunningServer) -> None:
    with dial(f"127.0.0.1:{server.port}") as ch:
        wait_ready(ch, 5)
    with dial("127.0.0.1:1") as ch, pytest.raises(TimeoutError, match=r"not ready after 0\.2 s"):
        wait_ready(ch, 0.2, "127.0.0.1:1")


@pytest.mark.parametrize("warm_up", ["lambda: None", "lambda: time.sleep(60)"], ids=["serving", "warming-up"])
def test_serve_until_sigterm(warm_up: str) -> None:
    """``serve`` in its own process: JSON logs, SERVING after warm-up, and a clean exit on SIGTERM,
    whether it comes once the service is serving or during a warm-up that would take a minute."""
    script = (
        "import grpc, time\n"
        "from services.common.config import ServerSettings, from_env\n"
        "from services.common.server import ServiceSpec, serve\n"
        "h = grpc.method_handlers_generic_handler('test.Echo', {})\n"
        "spec = ServiceSpec('test.Echo', lambda s: s.add_generic_rpc_handlers((h,)))\n"
        f"serve(spec, from_env(ServerSettings, 'TIRE_TEST_'), ready={warm_up})\n"
    )
    env = {**os.environ, "TIRE_TEST_PORT": "0", "TIRE_TEST_HOST": "127.0.0.1", "TIRE_TEST_METRICS_PORT": "-1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    serving = warm_up == "lambda: None"
    try:
        port = json.loads(lines.get(timeout=10))["port"]
        if serving:
            assert json.loads(lines.get(timeout=10))["message"] == "ready"
        with dial(f"127.0.0.1:{port}") as ch:
            check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        answer = health_pb2.HealthCheckResponse
        assert check.status == (answer.SERVING if serving else answer.NOT_SERVING)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # a loaded two-core machine is slow to tear down
    finally:
        proc.kill()
        proc.wait()
        reader.join(5)  # it ends at the pipe's end of file
        proc.stdout.close()
    messages = [json.loads(lines.get_nowait())["message"] for _ in range(lines.qsize())]
    assert messages == ["received SIGTERM", "stopping; in-flight calls get up to 30.0 s", "stopped"]


# --- TLS, mutual TLS and the plaintext health port ---------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """Three throw-away authorities and what they signed (servers for localhost and 127.0.0.1)."""

    ca: Issued
    server: Issued  # signed by ca
    other_ca: Issued
    renewed: Issued  # a server certificate signed by other_ca
    stranger: Issued  # a client certificate signed by other_ca
    client_ca: Issued
    client: Issued  # signed by client_ca


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    ca, other_ca, client_ca = pki.authority("ca"), pki.authority("other-ca"), pki.authority("client-ca")
    return Certificates(
        ca=ca,
        server=pki.issue(ca, "server"),
        other_ca=other_ca,
        renewed=pki.issue(other_ca, "renewed"),
        stranger=pki.issue(other_ca, "stranger", hosts=()),
        client_ca=client_ca,
        client=pki.issue(client_ca, "client", hosts=()),
    )


def install(issued: Issued, folder: Path) -> ServerSettings:
    """Put ``issued`` where a server reads its certificate (as a renewal does: a new file moved over the
    old one) and return settings serving it."""
    cert, key = folder / "tls.crt", folder / "tls.key"
    for source, target in ((issued.cert, cert), (issued.key, key)):
        shutil.copyfile(source, target.with_suffix(".new"))
        os.replace(target.with_suffix(".new"), target)
    return dataclasses.replace(LOCAL, tls_cert_file=str(cert), tls_key_file=str(key))


def start_tls(specs, folder: Path, issued: Issued, **settings) -> RunningServer:
    return start_server(specs, dataclasses.replace(install(issued, folder), **settings))


def dial_tls(port: int, trusted: Issued, client: Issued | None = None) -> grpc.Channel:
    """A channel to 127.0.0.1:``port`` trusting only ``trusted``, presenting ``client`` when given."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trusted.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return dial(f"127.0.0.1:{port}", retries=0, credentials=credentials)


@pytest.fixture(params=[False, True], ids=["grpc", "grpc.aio"])
def tls_server(
    servicer: EchoServicer, tmp_path: Path, certs: Certificates, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    spec = dataclasses.replace(echo_spec(servicer), asynchronous=request.param)
    running = start_tls(spec, tmp_path, certs.server)
    yield running
    running.stop(0)


def test_tls_serves_clients_that_trust_its_ca_and_no_others(
    tls_server: RunningServer, certs: Certificates
) -> None:
    with dial_tls(tls_server.port, certs.ca) as ch:
        assert echo(ch, b"hi") == b"hi"
    with dial(f"127.0.0.1:{tls_server.port}", retries=0) as ch:
        assert rpc_error(echo, ch, b"hi").code() == grpc.StatusCode.UNAVAILABLE
    with dial_tls(tls_server.port, certs.other_ca) as ch:
        assert rpc_error(echo, ch, b"hi").code() == grpc.StatusCode.UNAVAILABLE


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
    tls_server: RunningServer, certs: Certificates, tmp_path: Path
) -> None:
    with dial_tls(tls_server.port, certs.ca) as before:
        assert echo(before, b"before") == b"before"
        install(certs.renewed, tmp_path)
        with dial_tls(tls_server.port, certs.other_ca) as renewed:
            assert echo(renewed, b"renewed") == b"renewed"
        with dial_tls(tls_server.port, certs.ca) as stale:
            assert rpc_error(echo, stale, b"stale").code() == grpc.StatusCode.UNAVAILABLE
        assert echo(before, b"kept") == b"kept"  # a connection made before the renewal stays up


def test_half_a_renewal_keeps_the_current_certificate(
    tls_server: RunningServer, certs: Certificates, tmp_path: Path
) -> None:
    # The new certificate is in place, its key not yet: a connection now must still get the old pair.
    shutil.copyfile(certs.renewed.cert, tmp_path / "tls.crt.new")
    os.replace(tmp_path / "tls.crt.new", tmp_path / "tls.crt")
    with dial_tls(tls_server.port, certs.ca) as ch:
        assert echo(ch, b"old") == b"old"
    install(certs.renewed, tmp_path)  # and the key arrives
    with dial_tls(tls_server.port, certs.other_ca) as ch:
        assert echo(ch, b"new") == b"new"


def test_a_missing_certificate_file_stops_the_start(servicer: EchoServicer, tmp_path: Path) -> None:
    missing = tmp_path / "absent.crt"
    settings = dataclasses.replace(LOCAL, tls_cert_file=str(missing), tls_key_file=str(missing))
    with pytest.raises(ConfigError, match=rf"^cannot read the TLS file {missing}: No such file"):
        start_server(echo_spec(servicer), settings)


def test_mutual_tls_serves_clients_with_a_certificate_of_its_client_ca_only(
    servicer: EchoServicer, tmp_path: Path, certs: Certificates
) -> None:
    running = start_tls(
        echo_spec(servicer), tmp_path, certs.server, tls_client_ca_file=str(certs.client_ca.cert)
    )
    try:
        with dial_tls(running.port, certs.ca, client=certs.client) as ch:
            assert echo(ch, b"hi") == b"hi"
        with dial_tls(running.port, certs.ca) as ch:
            assert rpc_error(echo, ch, b"hi").code() == grpc.StatusCode.UNAVAILABLE
        with dial_tls(running.port, certs.ca, client=certs.stranger) as ch:
            assert rpc_error(echo, ch, b"hi").code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["grpc", "grpc.aio"])
def test_the_health_port_answers_health_alone_in_plaintext_and_stops_with_the_server(
    servicer: EchoServicer, tmp_path: Path, certs: Certificates, asynchronous: bool
) -> None:
    health_port = free_port()
    spec = dataclasses.replace(echo_spec(servicer), asynchronous=asynchronous)
    running = start_tls(spec, tmp_path, certs.server, health_port=health_port)
    try:
        with dial(f"127.0.0.1:{health_port}", retries=0) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            status = lambda name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            assert status("") == status(SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
            running.set_serving()
            assert status("") == status(SERVICE) == health_pb2.HealthCheckResponse.SERVING
            assert rpc_error(echo, ch, b"hi").code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        running.stop(0)
    with dial(f"127.0.0.1:{health_port}", retries=0) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        assert rpc_error(stub.Check, health_pb2.HealthCheckRequest()).code() == grpc.StatusCode.UNAVAILABLE


def test_a_taken_health_port_stops_the_start_and_frees_the_metrics_port(servicer: EchoServicer) -> None:
    metrics_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = dataclasses.replace(LOCAL, metrics_port=metrics_port, health_port=taken.getsockname()[1])
        with pytest.raises(RuntimeError):
            start_server(echo_spec(servicer), settings)
    with socket.socket() as again:
        again.bind(("127.0.0.1", metrics_port))  # OSError EADDRINUSE while the metrics server listens


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tls_key_file": "k"}, "ServerSettings.tls_key_file must be set with tls_cert_file, got 'k'."),
        ({"tls_cert_file": "c"}, "ServerSettings.tls_key_file must be set with tls_cert_file, got ''."),
        ({"tls_client_ca_file": "c"}, "ServerSettings.tls_client_ca_file needs tls_cert_file, got 'c'."),
    ],
)
def test_tls_settings_come_in_pairs(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerSettings(**fields)
    assert str(info.value) == message


def test_the_coordinator_refuses_to_serve_plaintext_unless_allowed(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TIRE_")}
    env |= {
        "TIRE_COORDINATOR_TOKENS": token_entry(new_token(), "alice"),
        "TIRE_COORDINATOR_PORT": "0",
        "TIRE_COORDINATOR_METRICS_PORT": "-1",
        "TIRE_COORDINATOR_DATABASE_URL": f"sqlite://{tmp_path / 'state.sqlite'}",
        "TIRE_S3_ENDPOINT": "127.0.0.1:1",
        "TIRE_S3_ACCESS_KEY": "access",
        "TIRE_S3_SECRET_KEY": "secret",
        "TIRE_S3_BUCKET": "bucket",
    }
    command = [sys.executable, "-m", "services.coordinator.server"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    # An uncaught ConfigError: its sentence is the traceback's last line.
    assert done.stderr.strip().splitlines()[-1] == (
        "services.common.errors.ConfigError: tire.v1.CoordinatorService serves TLS only, and "
        "TIRE_COORDINATOR_TLS_CERT_FILE is not set: set it and TIRE_COORDINATOR_TLS_KEY_FILE, or "
        "TIRE_COORDINATOR_ALLOW_PLAINTEXT=1 to serve plaintext (loopback, a mesh)."
    )
    assert not (tmp_path / "state.sqlite").exists()  # refused before anything started


# --- the coordinator client's channel ----------------------------------------------------------------


class CoordinatorDouble:
    """Answers the coordinator's Describe with an empty DescribeResponse and keeps each call's metadata."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def describe(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.metadata.append(dict(context.invocation_metadata()))
        return b""

    def spec(self) -> ServiceSpec:
        handler = grpc.method_handlers_generic_handler(
            "tire.v1.CoordinatorService", {"Describe": grpc.unary_unary_rpc_method_handler(self.describe)}
        )
        return ServiceSpec(
            "tire.v1.CoordinatorService", lambda server: server.add_generic_rpc_handlers((handler,))
        )


def describe_code(target: str, credentials: Credentials) -> grpc.StatusCode:
    try:
        coordinator_stub(target, credentials).Describe(common_pb2.DescribeRequest(), timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_coordinator_stub_speaks_plaintext_to_loopback_with_the_token_as_metadata(
    server: RunningServer,
) -> None:
    double, token = CoordinatorDouble(), new_token()
    running = start_server(double.spec(), LOCAL)
    try:
        assert describe_code(f"127.0.0.1:{running.port}", Credentials(token=token)) == grpc.StatusCode.OK
        assert double.metadata[-1]["authorization"] == f"Bearer {token}"
        assert describe_code(f"127.0.0.1:{running.port}", Credentials()) == grpc.StatusCode.OK
        assert "authorization" not in double.metadata[-1]
    finally:
        running.stop(0)
    # Plaintext too against a server that speaks it but does not host the coordinator.
    target = f"127.0.0.1:{server.port}"
    assert describe_code(target, Credentials(token=token)) == grpc.StatusCode.UNIMPLEMENTED


@pytest.fixture
def tls_double(tmp_path: Path, certs: Certificates) -> Iterator[tuple[RunningServer, CoordinatorDouble]]:
    double = CoordinatorDouble()
    running = start_tls(double.spec(), tmp_path, certs.server)
    yield running, double
    running.stop(0)


# coordinator_stub's channel retries UNAVAILABLE 4 times (about 1.5 s in all): one refused call a test.


def test_coordinator_stub_speaks_tls_when_given_a_ca(
    tls_double: tuple[RunningServer, CoordinatorDouble], certs: Certificates
) -> None:
    running, double = tls_double
    token = new_token()
    credentials = Credentials(token=token, ca_file=str(certs.ca.cert))
    assert describe_code(f"127.0.0.1:{running.port}", credentials) == grpc.StatusCode.OK
    assert double.metadata[-1]["authorization"] == f"Bearer {token}"


def test_coordinator_stub_given_a_ca_never_falls_back_to_plaintext(
    server: RunningServer, certs: Certificates
) -> None:
    credentials = Credentials(token=new_token(), ca_file=str(certs.ca.cert))
    assert describe_code(f"127.0.0.1:{server.port}", credentials) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "plaintext",
    [None, False],  # None: loopback without a CA is plaintext; False: TLS trusting the system's roots
)
def test_coordinator_stub_without_the_ca_is_refused_by_a_tls_server(
    tls_double: tuple[RunningServer, CoordinatorDouble], plaintext: bool | None
) -> None:
    running, double = tls_double
    credentials = Credentials(token=new_token(), plaintext=plaintext)
    assert describe_code(f"127.0.0.1:{running.port}", credentials) == grpc.StatusCode.UNAVAILABLE
    assert double.metadata == []


def test_coordinator_stub_presents_its_client_certificate(tmp_path: Path, certs: Certificates) -> None:
    double = CoordinatorDouble()
    running = start_tls(double.spec(), tmp_path, certs.server, tls_client_ca_file=str(certs.client_ca.cert))
    try:
        target, ca = f"127.0.0.1:{running.port}", str(certs.ca.cert)
        mutual = Credentials(
            token="t", ca_file=ca, cert_file=str(certs.client.cert), key_file=str(certs.client.key)
        )
        assert describe_code(target, mutual) == grpc.StatusCode.OK
        assert describe_code(target, Credentials(token="t", ca_file=ca)) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


# --- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    bucket: str
    server: ServerSettings = field(default_factory=ServerSettings)
    tags: tuple[str, ...] = ()
    debug: bool = False
    scale: float | None = 1.0


def test_from_env_defaults_and_nested() -> None:
    env = {"T_BUCKET": "assets", "T_SERVER_PORT": "6000", "T_SERVER_GRACE_S": "2.5"}
    settings = from_env(Settings, "T_", env)
    assert settings.bucket == "assets" and settings.scale == 1.0 and settings.tags == ()
    assert settings.server == ServerSettings(port=6000, grace_s=2.5)


def test_from_env_required_missing() -> None:
    with pytest.raises(ConfigError, match=r"^T_BUCKET is required but not set\.$"):
        from_env(Settings, "T_", {})


def test_from_env_bad_int() -> None:
    with pytest.raises(ConfigError) as info:
        from_env(Settings, "T_", {"T_BUCKET": "b", "T_SERVER_PORT": "abc"})
    assert str(info.value) == "T_SERVER_PORT must be an integer, got 'abc'."


def test_from_env_checks_server_settings() -> None:
    with pytest.raises(ConfigError, match=r"ServerSettings.port must be between 0 and 65535.*T_SERVER_"):
        from_env(Settings, "T_", {"T_BUCKET": "b", "T_SERVER_PORT": "70000"})
    with pytest.raises(ConfigError, match=r"ServerSettings.log_level must be a level name, got 'LOUD'"):
        from_env(Settings, "T_", {"T_BUCKET": "b", "T_SERVER_LOG_LEVEL": "LOUD"})


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("TRUE", True), (" yes", True), ("0", False), ("False", False), ("no", False)],
)
def test_from_env_bool(text: str, value: bool) -> None:
    assert from_env(Settings, "T_", {"T_BUCKET": "b", "T_DEBUG": text}).debug is value


def test_from_env_bad_bool() -> None:
    with pytest.raises(ConfigError, match=r"T_DEBUG must be a boolean .*, got 'maybe'\.$"):
        from_env(Settings, "T_", {"T_BUCKET": "b", "T_DEBUG": "maybe"})


def test_from_env_tuple_and_optional() -> None:
    settings = from_env(Settings, "T_", {"T_BUCKET": "b", "T_TAGS": "a, b,,c", "T_SCALE": ""})
    assert settings.tags == ("a", "b", "c") and settings.scale is None
    assert from_env(Settings, "T_", {"T_BUCKET": "b", "T_SCALE": "0.5"}).scale == 0.5


# --- logging -----------------------------------------------------------------------------------------


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_writes_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("tire.v1.Test", "debug")
    configure_logging("tire.v1.Test", "INFO")  # a second call must not duplicate lines
    logger = logging.getLogger("tire.test")
    logger.debug("dropped at INFO")
    logger.info("call done", extra={"method": "/test.Echo/Echo", "code": "OK", "duration_ms": 1.5})
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("failed")
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["time"].endswith("+00:00") and first["level"] == "INFO"
    assert first["service"] == "tire.v1.Test" and first["logger"] == "tire.test"
    assert first["message"] == "call done"
    assert (first["method"], first["code"], first["duration_ms"]) == ("/test.Echo/Echo", "OK", 1.5)
    assert second["level"] == "ERROR" and "ValueError: bad" in second["exc"]


# --- validation --------------------------------------------------------------------------------------


def test_validation_passes_good_values() -> None:
    assert validation.positive_int(3, "views", maximum=4) == 3
    assert validation.in_range(0.5, "scale", 0, 1) == 0.5
    assert validation.finite(1.0, "x") == 1.0
    assert validation.one_of("png", "format", ("png", "jpeg")) == "png"
    assert validation.non_empty([1], "frames") == [1]
    assert validation.s3_uri("s3://tire-assets/a/b.ply", "uri") == "s3://tire-assets/a/b.ply"


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: validation.positive_int(0, "width"), "`width` must be positive, got 0."),
        (lambda: validation.positive_int(True, "width"), "`width` must be an integer, got True."),
        (lambda: validation.positive_int(9, "views", maximum=8), "`views` must be between 1 and 8, got 9."),
        (lambda: validation.in_range(float("nan"), "s", 0, 1), "`s` must be between 0 and 1, got nan."),
        (lambda: validation.finite(float("inf"), "x"), "`x` must be a finite number, got inf."),
        (lambda: validation.one_of("gif", "format", ("png",)), "`format` must be one of 'png', got 'gif'."),
        (lambda: validation.non_empty("", "uri"), "`uri` must not be empty, got ''."),
        (lambda: validation.s3_uri("s3://b/k", "uri"), "`uri` must be an object URI like s3://bucket/key"),
        (
            lambda: validation.s3_uri("s3://bucket/", "uri"),
            "`uri` must be an object URI like s3://bucket/key",
        ),
        (lambda: validation.require(False, "f", 1, "must hold"), "`f` must hold, got 1."),
    ],
)
def test_validation_rejects_bad_values(check, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check()
    assert str(info.value).startswith(message)


def test_relayed_progress_comes_before_the_work_ends_and_its_errors_are_raised():
    release = threading.Event()

    def work(report):
        report(1)
        assert release.wait(10)
        report(2)
        return "model"

    events = iterate(relay_progress(work))
    assert next(events) == 1  # arrives while the work is still blocked
    release.set()
    assert list(events) == [2, Finished("model")]

    def broken(report):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(iterate(relay_progress(broken)))


def test_a_caller_that_leaves_stops_the_streamed_work():
    stopped = threading.Event()

    def endless(report):
        try:
            for step in range(1, 10_000):
                report(step)
                time.sleep(0.001)
        except CallerGone:
            stopped.set()
            raise
        return None

    events = iterate(relay_progress(endless))
    next(events)
    events.close()
    assert stopped.wait(5)
