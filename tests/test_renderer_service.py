"""The renderer as a real process: the S3 server and the renderer on loopback, called through the stub."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tire.v1 import common_pb2, renderer_pb2, renderer_pb2_grpc

from services.common.cameras import orbit_cameras
from services.common.clients import dial
from services.common.gaussians import read_ply
from services.common.tensors import get_tensor
from services.renderer.backends import CpuBackend

ROOT = Path(__file__).parents[1]
MONKEY = ROOT / "samples" / "monkey_lgm.ply"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def renderer(s3, tmp_path_factory):
    """A renderer process on free ports; yields (target, metrics_port, process)."""
    port, metrics_port = free_port(), free_port()
    log = (tmp_path_factory.mktemp("renderer") / "renderer.log").open("w+")
    env = {
        **os.environ,
        **s3.env,
        "TIRE_RENDERER_BACKEND": "cpu",
        "TIRE_RENDERER_PORT": str(port),
        "TIRE_RENDERER_HOST": "127.0.0.1",
        "TIRE_RENDERER_METRICS_PORT": str(metrics_port),
        "TIRE_RENDERER_GRACE_S": "5",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.renderer.server"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    target = f"127.0.0.1:{port}"
    channel = dial(target)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 180  # the first start may compile the numba kernels
    while True:
        try:
            if (
                health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                == health_pb2.HealthCheckResponse.SERVING
            ):
                break
        except grpc.RpcError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            pytest.fail(
                f"renderer did not become healthy (exit code {process.poll()}):\n{log.read()[-3000:]}"
            )
        time.sleep(0.25)
    yield target, metrics_port, process, log
    channel.close()
    if process.poll() is None:
        process.kill()
        process.wait()
    log.close()


@pytest.fixture(scope="module")
def stub(renderer):
    channel = dial(renderer[0])
    yield renderer_pb2_grpc.RendererServiceStub(channel)
    channel.close()


def test_health_and_reflection(renderer):
    channel = dial(renderer[0])
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "tire.v1.RendererService"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=name)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    (answer,) = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"tire.v1.RendererService", "grpc.health.v1.Health"} <= names
    channel.close()


def test_render_through_the_stub_matches_an_in_process_render(stub, store):
    ref = store.put_bytes(MONKEY.read_bytes(), suffix=".ply", media_type="application/x-ply")
    reply = stub.Render(
        renderer_pb2.RenderRequest(
            asset=common_pb2.AssetRef(frames=[ref]),
            orbit=common_pb2.Orbit(azimuths_deg=[0, 90, 180, 270], resolution=96, elevation_deg=-10),
            background_rgb=[1, 1, 1],
        ),
        timeout=60,
    )
    rgb = get_tensor(store, reply.views.rgb, dtype=np.uint8, shape=(4, 96, 96, 3))
    alpha = get_tensor(store, reply.views.alpha, dtype=np.float32, shape=(4, 96, 96))
    depth = get_tensor(store, reply.views.depth, dtype=np.float32, shape=(4, 96, 96))

    local = CpuBackend().render(
        read_ply(MONKEY), orbit_cameras([0, 90, 180, 270], 96, 96, -10), np.ones(3, np.float32)
    )
    np.testing.assert_array_equal(rgb, np.clip(np.rint(local.rgb * 255), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(alpha, local.alpha)
    np.testing.assert_array_equal(depth, local.depth)
    assert reply.num_gaussians == 36_295


def test_describe(stub):
    info = stub.Describe(common_pb2.DescribeRequest(), timeout=10)
    assert (info.service, info.backend) == ("tire.v1.RendererService", "cpu")


def test_malformed_ply_is_invalid_argument(stub, store):
    ref = store.put_bytes(
        b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n1\n", suffix=".ply"
    )
    request = renderer_pb2.RenderRequest(
        asset=common_pb2.AssetRef(frames=[ref]), orbit=common_pb2.Orbit(azimuths_deg=[0], resolution=32)
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Render(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`asset.frames[0]`" in info.value.details() and ref.uri in info.value.details()


def test_missing_object_is_not_found(stub, store):
    missing = common_pb2.ObjectRef(uri=store.uri_for("sha256/00/" + "0" * 64 + ".ply"))
    request = renderer_pb2.RenderRequest(
        asset=common_pb2.AssetRef(frames=[missing]), orbit=common_pb2.Orbit(azimuths_deg=[0], resolution=32)
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Render(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_missing_views_is_invalid_argument_naming_the_field(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Render(renderer_pb2.RenderRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`views`" in info.value.details()


def test_metrics_count_calls_by_code(renderer, stub):
    with urllib.request.urlopen(f"http://127.0.0.1:{renderer[1]}/metrics", timeout=10) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("tire_grpc_requests_total{")]
    assert any('method="Render"' in line and 'code="OK"' in line for line in lines)
    assert any('method="Render"' in line and 'code="INVALID_ARGUMENT"' in line for line in lines)


def test_sigterm_shuts_down_cleanly_and_logs_json(renderer):
    _, _, process, log = renderer
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    log.seek(0)
    records = [json.loads(line) for line in log.read().splitlines() if line.startswith("{")]
    assert any(r.get("method", "").endswith("Render") for r in records)
