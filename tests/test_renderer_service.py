"""The renderer as a real process: the S3 server and the renderer on loopback, called through the stub."""

import json
import signal
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


@pytest.fixture(scope="module")
def renderer(launch_service):
    return launch_service("services.renderer.server", "TIRE_RENDERER_", {"TIRE_RENDERER_BACKEND": "cpu"})


@pytest.fixture(scope="module")
def stub(renderer):
    channel = dial(renderer.target)
    yield renderer_pb2_grpc.RendererServiceStub(channel)
    channel.close()


def test_health_and_reflection(renderer):
    channel = dial(renderer.target)
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
    with urllib.request.urlopen(f"http://127.0.0.1:{renderer.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("tire_grpc_requests_total{")]
    assert any('method="Render"' in line and 'code="OK"' in line for line in lines)
    assert any('method="Render"' in line and 'code="INVALID_ARGUMENT"' in line for line in lines)


def test_sigterm_shuts_down_cleanly_and_logs_json(renderer):
    renderer.process.send_signal(signal.SIGTERM)
    assert renderer.process.wait(timeout=30) == 0
    records = [json.loads(line) for line in renderer.log().splitlines() if line.startswith("{")]
    assert any(r.get("method", "").endswith("Render") for r in records)
