"""The Helm chart ``helm/tire``, rendered with ``helm template`` (offline, no cluster).

What is checked here is behaviour the deployment depends on: a model swap rolls only the inpainter, the
coordinator reaches every stage through a headless Service, every pod is locked down, GPUs are requested
only where a GPU backend runs, every variable the chart sets is one the services actually read, and the web
console (an HTTP service, not in ``services.common.registry``) reaches the coordinator and the store.
``make helm-check`` (run by ``make test`` first) installs helm into .tools/bin and validates each scenario
in helm/tire/ci/ against the Kubernetes schemas.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import hashlib
import json
import re
import shutil
import subprocess
import threading
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import ClassVar

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.clients import service_config
from services.common.config import ServerSettings, from_env
from services.common.registry import STAGE_NAMES as STAGES
from services.common.store import StoreSettings
from services.coordinator.server import CoordinatorSettings
from services.inpainter.server import InpainterSettings
from services.reconstructor.server import ReconstructorSettings
from services.refiner.server import RefinerSettings
from services.renderer.server import RendererSettings
from services.tracker.server import TrackerSettings
from services.web.settings import ENV_PREFIX as WEB_PREFIX
from services.web.settings import WebSettings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tire"
SCENARIOS = sorted(path.stem for path in (CHART / "ci").glob("*.yaml"))
HELM = next(
    (str(p) for p in (ROOT / ".tools" / "bin" / "helm", shutil.which("helm")) if p and Path(p).is_file()),
    None,
)
pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary: run `make helm-check` to install it")

SETTINGS = {
    "renderer": RendererSettings,
    "tracker": TrackerSettings,
    "inpainter": InpainterSettings,
    "refiner": RefinerSettings,
    "reconstructor": ReconstructorSettings,
    "coordinator": CoordinatorSettings,
}
# Fixed credentials, so two renderings differ only where their values do (generated ones are random).
CREDENTIALS = ("--set", "s3.accessKey=tire-test", "--set", "s3.secretKey=tire-test-secret")
# Secrets generated at random on install (helm template cannot look the live ones up): two renderings
# always differ there, so comparisons of renderings leave them out.
GENERATED = {
    ("Secret", "tire-coordinator-tokens"),
    ("Secret", "tire-coordinator-tls"),
    ("Secret", "tire-postgresql"),
}
GPU = "nvidia.com/gpu"


@functools.cache
def _render(args: tuple[str, ...]) -> tuple[dict, ...]:
    result = subprocess.run(
        [HELM, "template", "tire", str(CHART), "--namespace", "tire", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


class RenderError(Exception):
    """``helm template`` failed; the message is its stderr."""


def render(*args: str, scenario: str | None = None) -> dict[tuple[str, str], dict]:
    """The chart's objects by (kind, name), rendered with ``args`` (and a ci/ scenario's values)."""
    if scenario is not None:
        args = ("--values", str(CHART / "ci" / f"{scenario}.yaml"), *args)
    docs = copy.deepcopy(_render(args))
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def pod_spec(objects: dict, kind: str, name: str) -> dict:
    return objects[(kind, name)]["spec"]["template"]["spec"]


def workloads(objects: dict) -> list[tuple[str, dict]]:
    return [
        (name, doc["spec"]["template"])
        for (kind, name), doc in objects.items()
        if kind in ("Deployment", "StatefulSet")
    ]


def test_a_new_inpainter_model_changes_only_the_inpainter_config_and_its_pods_checksum():
    before = render(*CREDENTIALS)
    after = render(*CREDENTIALS, "--set", "inpainter.model=s3://models/sd2-inpainting-v2")

    assert before.keys() == after.keys()
    changed = {key for key in before if before[key] != after[key]} - GENERATED
    assert changed == {("ConfigMap", "tire-inpainter"), ("Deployment", "tire-inpainter")}
    assert (
        after[("ConfigMap", "tire-inpainter")]["data"]["TIRE_INPAINTER_MODEL"]
        == "s3://models/sd2-inpainting-v2"
    )
    # The Deployment differs only by its config checksum: that is what rolls the inpainter's pods.
    annotations = [
        objects[("Deployment", "tire-inpainter")]["spec"]["template"]["metadata"]["annotations"]
        for objects in (before, after)
    ]
    assert annotations[0].pop("checksum/config") != annotations[1].pop("checksum/config")
    assert before[("Deployment", "tire-inpainter")] == after[("Deployment", "tire-inpainter")]


def test_each_stage_pod_carries_the_checksum_of_its_own_config_only():
    def checksums(objects: dict) -> dict[str, str]:
        return {
            name: objects[("Deployment", f"tire-{name}")]["spec"]["template"]["metadata"]["annotations"][
                "checksum/config"
            ]
            for name in (*STAGES, "coordinator")
        }

    objects = render(*CREDENTIALS)
    for name in (*STAGES, "coordinator"):
        container = pod_spec(objects, "Deployment", f"tire-{name}")["containers"][0]
        assert container["envFrom"] == [{"configMapRef": {"name": f"tire-{name}"}}]
    before = checksums(objects)
    assert len(set(before.values())) == len(before)
    after = checksums(render(*CREDENTIALS, "--set", "refiner.settings.num_inference_steps=25"))
    assert {name for name in before if before[name] != after[name]} == {"refiner"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_coordinator_dials_every_stage_through_its_headless_service(scenario):
    objects = render(scenario=scenario)
    config = objects[("ConfigMap", "tire-coordinator")]["data"]
    for stage in STAGES:
        assert config[f"TIRE_COORDINATOR_{stage.upper()}"] == f"dns:///tire-{stage}:50051"
        service = objects[("Service", f"tire-{stage}")]["spec"]
        assert service["clusterIP"] == "None"
        assert {"name": "grpc", "port": 50051}.items() <= service["ports"][0].items()
        pod_labels = objects[("Deployment", f"tire-{stage}")]["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= pod_labels.items()
    # Users reach the coordinator through an ordinary Service; only stages are headless.
    assert objects[("Service", "tire-coordinator")]["spec"].get("clusterIP") != "None"
    # The coordinator dials each target with the one client factory, whose service config balances
    # round-robin over every address the dns:/// name resolves to (one per ready pod).
    assert service_config(retries=4, timeout_s=None)["loadBalancingConfig"] == [{"round_robin": {}}]


def test_only_the_coordinator_presigns_for_the_public_store_endpoint():
    objects = render(*CREDENTIALS, "--set", "s3.publicEndpoint=https://s3.example.com")
    configs = {name: doc["data"] for (kind, name), doc in objects.items() if kind == "ConfigMap"}
    assert configs["tire-coordinator"]["TIRE_S3_PUBLIC_ENDPOINT"] == "https://s3.example.com"
    others = [data for name, data in configs.items() if name != "tire-coordinator"]
    assert others and all("TIRE_S3_PUBLIC_ENDPOINT" not in data for data in others)
    assert "TIRE_S3_PUBLIC_ENDPOINT" not in render(*CREDENTIALS)[("ConfigMap", "tire-coordinator")]["data"]


def test_the_inpainter_scales_behind_an_hpa_and_a_disruption_budget():
    objects = render(scenario="inpainter-scaled")
    hpa = objects[("HorizontalPodAutoscaler", "tire-inpainter")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tire-inpainter",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (4, 8)
    # Under an HPA the Deployment leaves the count alone, so an upgrade does not reset it.
    assert "replicas" not in objects[("Deployment", "tire-inpainter")]["spec"]
    assert objects[("PodDisruptionBudget", "tire-inpainter")]["spec"]["maxUnavailable"] == 1
    config = objects[("ConfigMap", "tire-inpainter")]["data"]
    assert from_env(ServerSettings, "TIRE_INPAINTER_", config).max_connection_age_s == 60.0
    pod = pod_spec(objects, "Deployment", "tire-inpainter")
    assert pod["terminationGracePeriodSeconds"] > 120  # longer than the server's grace_s
    assert not any(kind == "HorizontalPodAutoscaler" and name != "tire-inpainter" for kind, name in objects)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_runs_non_root_on_a_read_only_root_filesystem(scenario):
    objects = render(scenario=scenario)
    found = workloads(objects)
    assert {name for name, _ in found} >= {f"tire-{name}" for name in (*STAGES, "coordinator")}
    for name, template in found:
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert any(
                m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container["volumeMounts"]
            )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_stage_probes_use_grpc_health_with_room_to_load_models(scenario):
    objects = render(scenario=scenario)
    for stage in (*STAGES, "coordinator"):
        container = pod_spec(objects, "Deployment", f"tire-{stage}")["containers"][0]
        # The kubelet's gRPC probes speak no TLS: the coordinator, whose API does, serves health alone on a
        # plaintext port of its own (test_the_coordinator_is_probed_on_its_plaintext_health_port).
        port = 50052 if stage == "coordinator" else 50051
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (stage, probe)
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, stage
    inpainter = pod_spec(objects, "Deployment", "tire-inpainter")["containers"][0]["startupProbe"]
    assert inpainter["periodSeconds"] * inpainter["failureThreshold"] >= 600


def test_gpus_are_requested_by_the_gpu_backends_by_default():
    objects = render()
    backends = {}
    for stage in STAGES:
        pod = pod_spec(objects, "Deployment", f"tire-{stage}")
        resources = pod["containers"][0]["resources"]
        backends[stage] = objects[("ConfigMap", f"tire-{stage}")]["data"][f"TIRE_{stage.upper()}_BACKEND"]
        # The paper's tracker and refiner need weights the operator chooses; until then they run on the CPU.
        if stage in ("tracker", "refiner"):
            assert GPU not in resources.get("limits", {}) and "tolerations" not in pod
            continue
        assert resources["limits"][GPU] == 1 and resources["requests"][GPU] == 1, stage
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert backends == {
        "renderer": "gsplat",
        "tracker": "geometric",
        "inpainter": "sd-lora",
        "refiner": "consensus",
        "reconstructor": "gsplat-optimize",
    }


def test_the_paper_backends_get_their_gpu_and_weights():
    objects = render(scenario="paper-backends")
    for stage in STAGES:
        assert (
            pod_spec(objects, "Deployment", f"tire-{stage}")["containers"][0]["resources"]["limits"][GPU] == 1
        )
    tracker = objects[("ConfigMap", "tire-tracker")]["data"]
    assert tracker["TIRE_TRACKER_BACKEND"] == "cotracker"
    checkpoint = Path(tracker["TIRE_TRACKER_COTRACKER_CHECKPOINT"])
    pod = pod_spec(objects, "Deployment", "tire-tracker")
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if checkpoint.is_relative_to(m["mountPath"])]
    assert mount["readOnly"] is True
    assert {"name": mount["name"], "persistentVolumeClaim": {"claimName": "tire-models"}} in pod["volumes"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    refiner = from_env(RefinerSettings, "TIRE_REFINER_", objects[("ConfigMap", "tire-refiner")]["data"])
    assert (refiner.backend, refiner.model, refiner.trust_remote_code) == (
        "mv-diffusion",
        "s3://tire-models/mvdream-sd2.1-diffusers",
        True,
    )


def test_cpu_only_mode_requests_no_gpu_and_runs_the_cpu_backends():
    objects = render(scenario="cpu-only")
    for name, template in workloads(objects):
        for container in template["spec"]["containers"]:
            for section in ("limits", "requests"):
                assert GPU not in container["resources"].get(section, {}), name
        assert "tolerations" not in template["spec"] and "nodeSelector" not in template["spec"], name
    backends = {
        stage: objects[("ConfigMap", f"tire-{stage}")]["data"][f"TIRE_{stage.upper()}_BACKEND"]
        for stage in STAGES
    }
    assert backends == {
        "renderer": "cpu",
        "tracker": "geometric",
        "inpainter": "colour",
        "refiner": "consensus",
        "reconstructor": "colour-solve",
    }


def test_one_stage_without_a_gpu_falls_back_to_its_cpu_backend_alone():
    objects = render("--set", "inpainter.gpu=0")
    config = objects[("ConfigMap", "tire-inpainter")]["data"]
    assert config["TIRE_INPAINTER_BACKEND"] == "colour" and "TIRE_INPAINTER_MODEL" not in config
    assert (
        GPU not in pod_spec(objects, "Deployment", "tire-inpainter")["containers"][0]["resources"]["limits"]
    )
    assert pod_spec(objects, "Deployment", "tire-renderer")["containers"][0]["resources"]["limits"][GPU] == 1


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_variable_the_chart_sets_is_one_the_service_reads(scenario):
    objects = render(scenario=scenario)
    server_fields = {f.name.upper() for f in dataclasses.fields(ServerSettings)}
    for service, settings_type in SETTINGS.items():
        data = objects[("ConfigMap", f"tire-{service}")]["data"]
        prefix = f"TIRE_{service.upper()}_"
        fields = {f.name.upper() for f in dataclasses.fields(settings_type)}
        own = {key.removeprefix(prefix) for key in data if key.startswith(prefix)}
        assert own <= fields | server_fields, (service, own - fields - server_fields)
        store_variables = {"TIRE_S3_ENDPOINT", "TIRE_S3_BUCKET", "TIRE_S3_SECURE", "TIRE_S3_REGION"}
        if service == "coordinator":  # the one that presigns URLs, for clients outside the cluster
            store_variables.add("TIRE_S3_PUBLIC_ENDPOINT")
        assert {key for key in data if not key.startswith(prefix)} <= store_variables
        # The values parse as the service parses them at start (numbers stay numbers, not 1.07e+09).
        from_env(settings_type, prefix, data)
        server = from_env(ServerSettings, prefix, data)
        assert (server.port, server.metrics_port) == (50051, 9090)
        store = StoreSettings.from_env({**data, "TIRE_S3_ACCESS_KEY": "a", "TIRE_S3_SECRET_KEY": "b"})
        assert store.endpoint == (
            "objects.example.com:443" if scenario == "external-s3" else "tire-minio:9000"
        )


def test_large_settings_from_a_values_file_render_as_integers():
    config = render(scenario="inpainter-scaled")[("ConfigMap", "tire-inpainter")]["data"]
    assert config["TIRE_INPAINTER_MAX_SUBJECT_BYTES"] == "1073741824"
    assert from_env(InpainterSettings, "TIRE_INPAINTER_", config).max_subject_bytes == 2**30


def test_stages_accept_grpc_only_from_the_coordinator():
    objects = render()
    coordinator_labels = objects[("Deployment", "tire-coordinator")]["spec"]["template"]["metadata"]["labels"]
    for stage in STAGES:
        policy = objects[("NetworkPolicy", f"tire-{stage}")]["spec"]
        assert policy["policyTypes"] == ["Ingress"]
        grpc_rule, metrics_rule = policy["ingress"]
        assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
        (peer,) = grpc_rule["from"]
        assert peer["podSelector"]["matchLabels"].items() <= coordinator_labels.items()
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "coordinator"
        assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    minio = objects[("NetworkPolicy", "tire-minio")]["spec"]["ingress"][0]["from"][0]["podSelector"][
        "matchLabels"
    ]
    assert minio == {"app.kubernetes.io/name": "tire", "app.kubernetes.io/instance": "tire"}
    assert not any(kind == "NetworkPolicy" for kind, _ in render(scenario="cpu-only"))


def test_the_coordinator_keeps_its_job_state_on_a_claim_with_one_replica():
    objects = render()
    deployment = objects[("Deployment", "tire-coordinator")]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    config = objects[("ConfigMap", "tire-coordinator")]["data"]
    # SQLite by default: sqlite:///<absolute path>, no host, the URL's path the file's (urllib's convention,
    # as services/coordinator/databases.py reads it).
    url = urllib.parse.urlsplit(config["TIRE_COORDINATOR_DATABASE_URL"])
    assert (url.scheme, url.netloc) == ("sqlite", "")
    database = PurePosixPath(url.path)
    assert database.is_absolute() and database.name == "coordinator.sqlite"
    settings = from_env(CoordinatorSettings, "TIRE_COORDINATOR_", config)
    assert settings.database_url == "sqlite:///var/lib/tire/coordinator.sqlite"
    assert "TIRE_COORDINATOR_STATE_PATH" not in config
    state_dir = str(database.parent)
    pod = deployment["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == state_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == "tire-coordinator"
    assert ("PersistentVolumeClaim", "tire-coordinator") in objects


def test_store_credentials_come_from_the_charts_secret_or_yours():
    objects = render(*CREDENTIALS)
    secret = objects[("Secret", "tire-s3")]["data"]
    assert {key: base64.b64decode(value).decode() for key, value in secret.items()} == {
        "accessKey": "tire-test",
        "secretKey": "tire-test-secret",
    }
    generated = render()[("Secret", "tire-s3")]["data"]
    assert len(base64.b64decode(generated["secretKey"])) == 40

    external = render(scenario="external-s3")
    assert ("Secret", "tire-s3") not in external and ("StatefulSet", "tire-minio") not in external
    for name, template in workloads(external):
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        if name == "tire-web":  # the console reads the store only through presigned URLs
            assert not [variable for variable in env if variable.startswith("TIRE_S3_")]
            continue
        assert env["TIRE_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "tire-store-credentials",
            "key": "AWS_SECRET_ACCESS_KEY",
        }, name


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--set", "tracker.gpu=1"), "tracker.cotrackerCheckpoint"),
        (("--set", "minio.enabled=false"), "s3.endpoint"),
        (("--set", "inpainter.model="), "inpainter.model"),
        (("--set", "refiner.gpu=1"), "refiner.model"),
        (("--set", "inpainter.gpu=-1"), "/inpainter/gpu"),
        (("--set", "renderer.setings.max_views=4"), "setings"),
    ],
)
def test_a_bad_value_stops_the_render_naming_it(args, named):
    with pytest.raises(RenderError, match=named):
        render(*args)


# --- The coordinator's API: tokens, TLS, retention -------------------------------------------------------

# A token entry as the coordinator reads it: sha256 of the token's UTF-8 bytes, the principal, maybe admin.
TOKEN_ENTRY = re.compile(
    r"sha256:(?P<digest>[0-9a-f]{64}) (?P<principal>[a-z0-9][a-z0-9._@-]{0,63})(?: admin)?"
)
SERVICE_NAMES = (
    "tire-coordinator",
    "tire-coordinator.tire",
    "tire-coordinator.tire.svc",
    "tire-coordinator.tire.svc.cluster.local",
)
TLS_SCENARIO = "tls-existing-secrets"


def decoded(secret: dict) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def coordinator_env(objects: dict) -> dict[str, str | None]:
    container = pod_spec(objects, "Deployment", "tire-coordinator")["containers"][0]
    return {entry["name"]: entry.get("value") for entry in container["env"]}


def secret_file(objects: dict, path: str) -> tuple[str, str]:
    """(Secret, key) of a file the coordinator reads, followed through its container's mounts. Only a whole
    Secret volume will do: the kubelet updates those in place, never a file mounted with subPath."""
    pod = pod_spec(objects, "Deployment", "tire-coordinator")
    file = PurePosixPath(path)
    (mount,) = [
        m for m in pod["containers"][0]["volumeMounts"] if PurePosixPath(m["mountPath"]) == file.parent
    ]
    assert "subPath" not in mount and "subPathExpr" not in mount and mount["readOnly"] is True, mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    # Readable by the pod's fsGroup, the coordinator's user's group, and by no one else.
    assert volume["secret"]["defaultMode"] == 0o440 and "fsGroup" in pod["securityContext"]
    (key,) = [item["key"] for item in volume["secret"]["items"] if item["path"] == file.name]
    return volume["secret"]["secretName"], key


def serves_tls_for(certificate: bytes, key: bytes, name: str) -> bool:
    """Whether a client trusting ``certificate`` as its CA accepts a server presenting it as ``name``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, certificate)]))
    server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=certificate)
        options = [("grpc.ssl_target_name_override", name)]
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError:
                return False
            return True
    finally:
        server.stop(None)


class Cluster:
    """A stand-in for the Kubernetes API that ``helm template --dry-run=server`` reads: the discovery
    documents for the kinds the chart renders, and ``secrets``, the Secrets of namespace tire, as an
    earlier release left them (Helm's ownership metadata included); any other object is absent."""

    GROUP_VERSIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "v1": ("ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "ServiceAccount"),
        "apps/v1": ("Deployment", "StatefulSet"),
        "autoscaling/v2": ("HorizontalPodAutoscaler",),
        "policy/v1": ("PodDisruptionBudget",),
        "networking.k8s.io/v1": ("NetworkPolicy",),
        "batch/v1": ("Job",),
    }
    NOT_FOUND: ClassVar[dict] = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}

    def __init__(self, secrets: dict[str, dict]):
        self.secrets = secrets
        cluster = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = cluster.answer(self.path.partition("?")[0])
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str) -> tuple[int, dict]:
        if path == "/version":
            return 200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = []
            for group_version in self.GROUP_VERSIONS:
                if "/" in group_version:
                    group, version = group_version.split("/")
                    entry = {"groupVersion": group_version, "version": version}
                    groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for group_version, kinds in self.GROUP_VERSIONS.items():
            if path == ("/api/v1" if group_version == "v1" else f"/apis/{group_version}"):
                resources = [
                    {
                        "name": f"{kind.lower()}s",
                        "singularName": kind.lower(),
                        "kind": kind,
                        "namespaced": True,
                    }
                    for kind in kinds
                ]
                return 200, {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}
        name = path.removeprefix("/api/v1/namespaces/tire/secrets/")
        if name in self.secrets:
            return 200, {"apiVersion": "v1", "kind": "Secret", **copy.deepcopy(self.secrets[name])}
        return 404, self.NOT_FOUND

    def render(self, tmp_path: Path, *args: str) -> dict[tuple[str, str], dict]:
        server = f"http://127.0.0.1:{self.server.server_port}"
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": server}}],
                    "users": [{"name": "anyone", "user": {}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "anyone"}}],
                    "current-context": "fake",
                }
            )
        )
        flags = ("--namespace", "tire", "--dry-run=server", "--disable-openapi-validation")
        result = subprocess.run(
            [HELM, "template", "tire", str(CHART), *flags, *args],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)},
        )
        if result.returncode != 0:
            raise RenderError(result.stderr)
        docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def left_by_an_earlier_release(secret: dict) -> dict:
    """``secret`` as the cluster holds it after an install (or after uninstall, kept): with Helm's
    ownership metadata, which lets the next install of release tire take it over."""
    metadata = copy.deepcopy(secret["metadata"])
    metadata.setdefault("annotations", {}).update(
        {"meta.helm.sh/release-name": "tire", "meta.helm.sh/release-namespace": "tire"}
    )
    return {"metadata": metadata, "type": secret.get("type", "Opaque"), "data": secret["data"]}


def test_the_chart_generates_one_admin_token_and_mounts_only_its_hashed_entry():
    objects = render(*CREDENTIALS)
    env = coordinator_env(objects)
    name, key = secret_file(objects, env["TIRE_COORDINATOR_TOKENS_FILE"])
    assert (name, key) == ("tire-coordinator-tokens", "tokens")
    secret = objects[("Secret", name)]
    data = decoded(secret)
    token = data["token"]
    assert len(token) >= 40 and token.isalnum()
    (entry,) = data["tokens"].splitlines()
    match = TOKEN_ENTRY.fullmatch(entry)
    assert match and match["digest"] == hashlib.sha256(token.encode()).hexdigest(), entry
    assert entry.split()[1:] == ["admin", "admin"]
    # Kept on uninstall, so the token handed out stays valid across a reinstall.
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The plaintext token is for the operator to hand out: no pod mounts it or reads it from env.
    for workload, template in workloads(objects):
        for volume in template["spec"]["volumes"]:
            if volume.get("secret", {}).get("secretName") == name:
                assert [item["key"] for item in volume["secret"]["items"]] == ["tokens"], workload
        for container in template["spec"]["containers"]:
            assert name not in yaml.safe_dump(container.get("env", [])), workload
    assert "TIRE_COORDINATOR_TOKENS" not in env
    # Each install draws its own.
    assert decoded(render()[("Secret", name)])["token"] != token


def test_an_upgrade_keeps_the_live_token_and_the_entries_added_to_it(tmp_path):
    token = "operator-handed-this-out"
    tokens = f"sha256:{hashlib.sha256(token.encode()).hexdigest()} admin admin\nsha256:{'0' * 64} alice\n"
    installed = render(*CREDENTIALS)[("Secret", "tire-coordinator-tokens")]
    live = left_by_an_earlier_release(installed)
    live["data"] = {
        key: base64.b64encode(value.encode()).decode()
        for key, value in (("token", token), ("tokens", tokens))
    }
    cluster = Cluster({"tire-coordinator-tokens": live})
    try:
        upgraded = cluster.render(tmp_path, *CREDENTIALS)
    finally:
        cluster.close()
    assert decoded(upgraded[("Secret", "tire-coordinator-tokens")]) == {"token": token, "tokens": tokens}


def test_your_tokens_secret_is_mounted_and_the_chart_makes_none():
    objects = render("--set", "coordinator.auth.existingSecret=api-tokens")
    env = coordinator_env(objects)
    assert secret_file(objects, env["TIRE_COORDINATOR_TOKENS_FILE"]) == ("api-tokens", "tokens")
    assert ("Secret", "tire-coordinator-tokens") not in objects and ("Secret", "api-tokens") not in objects


def test_tls_is_on_by_default_with_a_self_signed_certificate_for_the_service_names():
    objects = render(*CREDENTIALS)
    env = coordinator_env(objects)
    assert "TIRE_COORDINATOR_ALLOW_PLAINTEXT" not in env
    assert "TIRE_COORDINATOR_TLS_CLIENT_CA_FILE" not in env
    assert secret_file(objects, env["TIRE_COORDINATOR_TLS_CERT_FILE"]) == ("tire-coordinator-tls", "tls.crt")
    assert secret_file(objects, env["TIRE_COORDINATOR_TLS_KEY_FILE"]) == ("tire-coordinator-tls", "tls.key")
    secret = objects[("Secret", "tire-coordinator-tls")]
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = decoded(secret)
    certificate, key = data["tls.crt"].encode(), data["tls.key"].encode()
    # A client that trusts tls.crt as its CA (TIRE_CA_FILE, as NOTES.txt says) reaches the coordinator under
    # each of the Service's names, and under localhost through `kubectl port-forward`; under no other.
    for name in (*SERVICE_NAMES, "localhost"):
        assert serves_tls_for(certificate, key, name), name
    assert not serves_tls_for(certificate, key, "tire-coordinator.elsewhere")
    # More names (a LoadBalancer's) by value.
    extra = render("--set", "coordinator.tls.dnsNames={tire.example.com}")
    data = decoded(extra[("Secret", "tire-coordinator-tls")])
    assert serves_tls_for(data["tls.crt"].encode(), data["tls.key"].encode(), "tire.example.com")


def test_an_upgrade_keeps_the_certificate_while_its_names_are_the_same(tmp_path):
    installed = render(*CREDENTIALS)[("Secret", "tire-coordinator-tls")]
    cluster = Cluster({"tire-coordinator-tls": left_by_an_earlier_release(installed)})
    try:
        upgraded = cluster.render(tmp_path, *CREDENTIALS)[("Secret", "tire-coordinator-tls")]
        renamed = cluster.render(
            tmp_path, *CREDENTIALS, "--set-json", 'coordinator.tls.dnsNames=["tire.example.com"]'
        )
    finally:
        cluster.close()
    assert upgraded["data"] == installed["data"], "clients' CA file stays valid"
    # A new name needs a new certificate, which names it.
    data = decoded(renamed[("Secret", "tire-coordinator-tls")])
    assert data["tls.crt"] != decoded(installed)["tls.crt"]
    assert serves_tls_for(data["tls.crt"].encode(), data["tls.key"].encode(), "tire.example.com")


def test_plaintext_when_allowed_mounts_no_certificate():
    objects = render("--set", "coordinator.tls.allowPlaintext=true")
    env = coordinator_env(objects)
    assert env["TIRE_COORDINATOR_ALLOW_PLAINTEXT"] == "1"
    assert not [name for name in env if name.startswith("TIRE_COORDINATOR_TLS_")]
    assert ("Secret", "tire-coordinator-tls") not in objects
    pod = pod_spec(objects, "Deployment", "tire-coordinator")
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"tire-coordinator-tokens"}, "tokens are still required"
    for conflicting in ("coordinator.tls.secretName=api-tls", "coordinator.tls.clientCASecret=api-ca"):
        with pytest.raises(RenderError, match="allowPlaintext"):
            render("--set", "coordinator.tls.allowPlaintext=true", "--set", conflicting)


def test_your_certificate_and_client_ca_are_mounted_and_the_chart_makes_no_secret():
    objects = render(scenario=TLS_SCENARIO)
    env = coordinator_env(objects)
    assert secret_file(objects, env["TIRE_COORDINATOR_TOKENS_FILE"]) == ("tire-api-tokens", "tokens")
    assert secret_file(objects, env["TIRE_COORDINATOR_TLS_CERT_FILE"]) == ("tire-api-tls", "tls.crt")
    assert secret_file(objects, env["TIRE_COORDINATOR_TLS_KEY_FILE"]) == ("tire-api-tls", "tls.key")
    client_ca = ("tire-api-client-ca", "client-ca.pem")
    assert secret_file(objects, env["TIRE_COORDINATOR_TLS_CLIENT_CA_FILE"]) == client_ca
    assert "TIRE_COORDINATOR_ALLOW_PLAINTEXT" not in env
    assert not [key for key in objects if key[0] == "Secret" and key[1] != "tire-s3"]


@pytest.mark.parametrize(
    ("args", "seconds"),
    [
        ((), 30 * 86400),
        (("--set", "coordinator.retentionDays=0"), 0),
        (("--values", str(CHART / "ci" / f"{TLS_SCENARIO}.yaml")), 7 * 86400),
    ],
)
def test_retention_reaches_the_coordinator_in_seconds(args, seconds):
    assert coordinator_env(render(*args))["TIRE_COORDINATOR_RETENTION_S"] == str(seconds)


def test_admission_limits_reach_the_coordinator():
    env = coordinator_env(render())
    defaults = {"MAX_WATCHES_PER_CALLER": "100", "MAX_WATCHES": "10000", "MAX_ACTIVE_JOBS_PER_CALLER": "1000"}
    defaults |= {"MAX_SUBMISSIONS_PER_S": "10", "SUBMISSION_BURST": "100"}
    assert {name: env[f"TIRE_COORDINATOR_{name}"] for name in defaults} == defaults
    env = coordinator_env(render("--set", "coordinator.limits.maxWatchesPerCaller=7"))
    assert env["TIRE_COORDINATOR_MAX_WATCHES_PER_CALLER"] == "7"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--set", "coordinator.retentionDays=-1"), "retentionDays"),
        (("--set", "coordinator.limits.maxWatches=0"), "maxWatches"),
        (("--set-json", "coordinator.retentionDays=0.5"), "retentionDays"),
        (("--set", "coordinator.healthPort=50051"), "healthPort"),
        (("--set", "coordinator.tls.secretName=Not_A_Name"), "secretName"),
        (("--set", "coordinator.auth.tokens=inline"), "tokens"),
    ],
)
def test_a_bad_coordinator_value_stops_the_render_naming_it(args, named):
    with pytest.raises(RenderError, match=named):
        render(*args)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_coordinator_is_probed_on_its_plaintext_health_port(scenario):
    objects = render(scenario=scenario)
    container = pod_spec(objects, "Deployment", "tire-coordinator")["containers"][0]
    port = int(coordinator_env(objects)["TIRE_COORDINATOR_HEALTH_PORT"])
    assert {"name": "health", "containerPort": port, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": port}, probe
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    assert port != grpc_port
    # Health alone is plaintext; users reach only the API port through the Service.
    service = objects[("Service", "tire-coordinator")]["spec"]
    assert [p["targetPort"] for p in service["ports"]] == ["grpc"]


# --- The coordinator's job state: SQLite or PostgreSQL ---------------------------------------------------

# Scenario: (the URL's Secret and key, the password's, replicas).
POSTGRES_SCENARIOS = {
    "postgres-bundled": (("tire-postgresql", "url"), ("tire-postgresql", "password"), 2),
    "postgres-external": (("tire-db-app", "uri"), ("tire-db-password", "password"), 3),
}


def coordinator_env_entries(objects: dict) -> dict[str, dict]:
    container = pod_spec(objects, "Deployment", "tire-coordinator")["containers"][0]
    return {entry["name"]: entry for entry in container["env"]}


@pytest.mark.parametrize("scenario", sorted(POSTGRES_SCENARIOS))
def test_with_postgresql_several_coordinators_share_the_jobs_without_a_state_volume(scenario):
    url_secret, password_secret, replicas = POSTGRES_SCENARIOS[scenario]
    objects = render(scenario=scenario)
    deployment = objects[("Deployment", "tire-coordinator")]["spec"]
    assert deployment["replicas"] == replicas >= 2
    # A new pod is ready before an old one stops: the API stays up through an upgrade.
    assert deployment["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    labels = deployment["template"]["metadata"]["labels"]
    budget = objects[("PodDisruptionBudget", "tire-coordinator")]["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    pod = deployment["template"]["spec"]
    # No state volume, no claim: only /tmp's emptyDir and Secrets.
    assert ("PersistentVolumeClaim", "tire-coordinator") not in objects
    assert all(set(volume) & {"emptyDir", "secret"} for volume in pod["volumes"]), pod["volumes"]
    assert [v["name"] for v in pod["volumes"] if "emptyDir" in v] == ["tmp"]
    container = pod["containers"][0]
    assert not [m for m in container["volumeMounts"] if m["mountPath"].startswith("/var/lib")]
    env = coordinator_env_entries(objects)
    # The URL only through secretKeyRef (it may hold a password), in no ConfigMap of the release.
    url = env["TIRE_COORDINATOR_DATABASE_URL"]
    assert "value" not in url
    assert url["valueFrom"]["secretKeyRef"] == {"name": url_secret[0], "key": url_secret[1]}
    for (kind, name), doc in objects.items():
        if kind == "ConfigMap":
            assert not [key for key in doc["data"] if "DATABASE" in key], name
            assert "postgresql://" not in yaml.safe_dump(doc["data"]), name
    # The password as a file from a whole Secret volume (0440, no subPath).
    assert secret_file(objects, env["TIRE_COORDINATOR_DATABASE_PASSWORD_FILE"]["value"]) == password_secret
    # Each replica leases jobs under its pod's name.
    assert env["TIRE_COORDINATOR_REPLICA_ID"]["valueFrom"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}
    }
    # The settings the coordinator starts with parse (the lease's length among them).
    config = objects[("ConfigMap", "tire-coordinator")]["data"]
    settings = from_env(CoordinatorSettings, "TIRE_COORDINATOR_", config)
    assert settings.lease_s == (20.0 if scenario == "postgres-external" else 30.0)
    # A stopping replica has time to finish its calls and hand its leases back.
    server = from_env(ServerSettings, "TIRE_COORDINATOR_", config)
    assert pod["terminationGracePeriodSeconds"] >= max(30, server.grace_s + 10)
    # Replicas preferably on different nodes (the chart's), or as the operator's affinity says.
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= labels.items() and selector["app.kubernetes.io/component"] == "coordinator"
    topology = "kubernetes.io/hostname" if scenario == "postgres-bundled" else "topology.kubernetes.io/zone"
    assert term["podAffinityTerm"]["topologyKey"] == topology


def test_sqlite_keeps_one_coordinator_and_refuses_more():
    objects = render()
    assert ("PodDisruptionBudget", "tire-coordinator") not in objects
    assert not [key for key in objects if "postgresql" in key[1]]
    env = coordinator_env_entries(objects)
    assert "TIRE_COORDINATOR_DATABASE_PASSWORD_FILE" not in env
    assert "TIRE_COORDINATOR_DATABASE_URL" not in env, "SQLite's URL is the ConfigMap's"
    assert env["TIRE_COORDINATOR_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "affinity" not in pod_spec(objects, "Deployment", "tire-coordinator")
    assert (
        render("--set", "coordinator.replicas=1")[("Deployment", "tire-coordinator")]["spec"]["replicas"] == 1
    )
    # One file, one writer.
    with pytest.raises(
        RenderError, match=re.escape("coordinator.replicas is 2, but the job state is SQLite")
    ):
        render("--set", "coordinator.replicas=2")
    with pytest.raises(RenderError, match=re.escape("coordinator.replicas is 3")):
        render("--set", "coordinator.replicas=3", "--set", "coordinator.persistence.enabled=false")
    # PostgreSQL takes an explicit count, one included.
    one = render("--set", "database.existingSecret=db", "--set", "coordinator.replicas=1")
    assert one[("Deployment", "tire-coordinator")]["spec"]["replicas"] == 1


def test_the_bundled_postgresql_is_one_locked_down_instance_probed_with_pg_isready():
    objects = render(scenario="postgres-bundled")
    statefulset = objects[("StatefulSet", "tire-postgresql")]["spec"]
    assert statefulset["replicas"] == 1 and statefulset["serviceName"] == "tire-postgresql"
    (claim,) = statefulset["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "standard"
    pod = statefulset["template"]["spec"]
    (container,) = pod["containers"]
    assert re.fullmatch(r"docker\.io/library/postgres:15\.\d+-\w+", container["image"]), container["image"]
    # The official image's postgres user, non-root (the rest of the lockdown:
    # test_every_pod_runs_non_root_on_a_read_only_root_filesystem).
    assert pod["securityContext"]["runAsUser"] == 999 and pod["securityContext"]["fsGroup"] == 999
    assert container["securityContext"]["runAsUser"] == 999
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    # PGDATA in a subdirectory of the volume, whose root the server may not own.
    (data,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    pgdata = PurePosixPath(env["PGDATA"])
    assert pgdata.parent == PurePosixPath(data["mountPath"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[0] == "pg_isready" and "127.0.0.1" in command, (probe, command)
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # The Service the coordinator's URL names, and the Secret both sides read.
    service = objects[("Service", "tire-postgresql")]["spec"]
    assert service["selector"].items() <= statefulset["template"]["metadata"]["labels"].items()
    (port,) = service["ports"]
    assert (port["port"], port["targetPort"]) == (5432, "postgresql")
    secret = objects[("Secret", "tire-postgresql")]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = decoded(secret)
    url = urllib.parse.urlsplit(data["url"])
    assert (url.scheme, url.username, url.password) == ("postgresql", "tire", None), "no password in the URL"
    assert (url.hostname, url.port, url.path) == ("tire-postgresql", 5432, "/tire")
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == ("tire", "tire")
    assert len(data["password"]) >= 32 and data["password"].isalnum()
    file = PurePosixPath(env["POSTGRES_PASSWORD_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == file.parent]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "tire-postgresql"
    assert volume["secret"]["items"] == [{"key": "password", "path": file.name}]
    # Only the coordinator's pods reach it.
    (rule,) = objects[("NetworkPolicy", "tire-postgresql")]["spec"]["ingress"]
    assert rule["ports"] == [{"port": "postgresql", "protocol": "TCP"}]
    (peer,) = rule["from"]
    coordinator = objects[("Deployment", "tire-coordinator")]["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= coordinator.items()
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "coordinator"
    closed = render("--set", "networkPolicy.enabled=false", scenario="postgres-bundled")
    assert ("NetworkPolicy", "tire-postgresql") not in closed


def test_an_upgrade_keeps_the_bundled_postgresql_password(tmp_path):
    installed = render("--set", "postgresql.enabled=true")[("Secret", "tire-postgresql")]
    cluster = Cluster({"tire-postgresql": left_by_an_earlier_release(installed)})
    try:
        upgraded = cluster.render(tmp_path, "--set", "postgresql.enabled=true")[("Secret", "tire-postgresql")]
    finally:
        cluster.close()
    assert upgraded["data"] == installed["data"], "the server knows only the password it started with"
    # Each install draws its own (this rendering is another: its arguments differ), unless the values set it.
    other = render(scenario="postgres-bundled")[("Secret", "tire-postgresql")]
    assert decoded(other)["password"] != decoded(installed)["password"]
    chosen = render("--set", "postgresql.enabled=true", "--set", "postgresql.auth.password=trial-only")
    assert decoded(chosen[("Secret", "tire-postgresql")])["password"] == "trial-only"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--set", "database.existingSecret=db", "--set", "postgresql.enabled=true"), "postgresql.enabled"),
        (("--set", "coordinator.replicas=0"), "replicas"),
        (("--set", "coordinator.settings.database_url=postgresql://tire@db/tire"), "database_url"),
        (("--set", "coordinator.settings.replica_id=one"), "replica_id"),
        (("--set", "database.existingSecret=Not_A_Name"), "existingSecret"),
        (("--set", "postgresql.enabled=true", "--set", "postgresql.auth.username=Bad-Name"), "username"),
        (("--set", "postgresql.replicas=2"), "replicas"),
    ],
)
def test_a_bad_database_value_stops_the_render_naming_it(args, named):
    with pytest.raises(RenderError, match=named):
        render(*args)


# --- Triton ----------------------------------------------------------------------------------------------

TRITON = ("--values", str(CHART / "ci" / "triton.yaml"))
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def _weights_args(stage: str) -> tuple[str, ...]:
    value = {"tracker": "tracker.cotrackerCheckpoint"}.get(stage, f"{stage}.model")
    return ("--set", f"{value}=s3://tire/models/{stage}-v1")


def test_triton_disabled_renders_nothing_new():
    objects = render(*CREDENTIALS)
    assert not [key for key in objects if "triton" in key[1]]
    for (kind, _), doc in objects.items():
        if kind == "ConfigMap":
            assert not any("TRITON" in key for key in doc["data"]), doc["metadata"]["name"]
    # Enabling it with no stage on it changes no stage.
    alone = render(*CREDENTIALS, "--set", "triton.enabled=true", "--set-json", "triton.stages=[]")
    assert {key for key in alone if "triton" not in key[1]} == set(objects)
    assert all(alone[key] == objects[key] for key in objects.keys() - GENERATED)
    assert ("Job", "tire-triton-publish") not in alone


def test_triton_enabled_renders_its_deployment_services_hpa_pdb_and_hook():
    objects = render(*CREDENTIALS, *TRITON)
    deployment = objects[("Deployment", "tire-triton")]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == TRITON_PORTS
    assert container["args"][:3] == [
        "--model-repository=s3://tire-minio:9000/tire/triton",
        "--model-control-mode=explicit",
        "--load-model=*",
    ]
    assert {f"--{name}-port={port}" for name, port in TRITON_PORTS.items()} <= set(container["args"])
    # Probes on Triton's HTTP health: live for startup and liveness, ready for readiness.
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    # Metrics scraped as the other services' are (Prometheus' pod annotations), on Triton's port.
    annotations = pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "8002")
    # A GPU by value, the GPU node pool's toleration; /dev/shm for the Python backend's tensors.
    assert container["resources"]["limits"][GPU] == 1 and container["resources"]["requests"][GPU] == 1
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    (shm,) = [v for v in pod["spec"]["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    (init,) = pod["spec"]["initContainers"]
    assert init["command"] == ["tire", "models", "init", "--repository", "s3://tire/triton"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True

    service = objects[("Service", "tire-triton")]["spec"]
    assert {p["name"]: p["port"] for p in service["ports"]} == TRITON_PORTS
    assert (
        service.get("clusterIP") != "None"
        and service["selector"].items() <= pod["metadata"]["labels"].items()
    )
    pods = objects[("Service", "tire-triton-pods")]["spec"]
    assert pods["clusterIP"] == "None" and pods["selector"] == service["selector"]

    hpa = objects[("HorizontalPodAutoscaler", "tire-triton")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tire-triton"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    assert "replicas" not in deployment["spec"]
    assert objects[("PodDisruptionBudget", "tire-triton")]["spec"]["maxUnavailable"] == 1

    job = objects[("Job", "tire-triton-publish")]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    (publish,) = job["spec"]["template"]["spec"]["containers"]
    assert publish["image"] == container["image"]
    assert publish["args"] == [
        "--repository",
        "s3://tire/triton",
        "--triton",
        "tire-triton-pods:8001",
        "inpainter=s3://tire/models/sd2-inpainting",
    ]
    assert publish["command"] == ["tire", "models", "sync"]  # tests/test_triton_inpaint.py runs it


def test_triton_stages_call_the_triton_service_without_a_gpu_of_their_own():
    from services.common.registry import TRITON_STAGES

    args = [*CREDENTIALS, *TRITON, "--set", f"triton.stages={{{','.join(TRITON_STAGES)}}}"]
    for stage in TRITON_STAGES:
        args += _weights_args(stage)
    objects = render(*args)
    service = objects[("Service", "tire-triton")]["spec"]
    grpc_port = next(p["port"] for p in service["ports"] if p["name"] == "grpc")
    for stage in STAGES:
        data = objects[("ConfigMap", f"tire-{stage}")]["data"]
        settings = from_env(SETTINGS[stage], f"TIRE_{stage.upper()}_", data)
        pod = pod_spec(objects, "Deployment", f"tire-{stage}")
        if stage not in TRITON_STAGES:
            assert settings.backend != "triton" and f"TIRE_{stage.upper()}_TRITON_URL" not in data
            continue
        assert settings.backend == "triton"
        assert settings.triton_url == f"tire-triton:{grpc_port}"
        assert settings.triton_version == ""
        assert GPU not in pod["containers"][0]["resources"].get("limits", {}), stage
        assert "tolerations" not in pod, stage
    job_args = pod_spec(objects, "Job", "tire-triton-publish")["containers"][0]["args"]
    assert job_args[4:] == [f"{stage}=s3://tire/models/{stage}-v1" for stage in TRITON_STAGES]
    # A version pin is a stage setting.
    pinned = render(*CREDENTIALS, *TRITON, "--set", "inpainter.settings.triton_version=3")
    assert pinned[("ConfigMap", "tire-inpainter")]["data"]["TIRE_INPAINTER_TRITON_VERSION"] == "3"


def test_a_model_swap_on_triton_changes_only_the_hook_and_restarts_no_pod():
    before = render(*CREDENTIALS, *TRITON)
    after = render(*CREDENTIALS, *TRITON, "--set", "inpainter.model=s3://tire/models/sd2-inpainting-v2")
    assert before.keys() == after.keys()
    changed = {key for key in before if before[key] != after[key]} - GENERATED
    assert changed == {("Job", "tire-triton-publish")}
    assert after[("Job", "tire-triton-publish")]["spec"]["template"]["spec"]["containers"][0]["args"][-1] == (
        "inpainter=s3://tire/models/sd2-inpainting-v2"
    )


def test_triton_reads_the_store_credentials_from_the_secret_never_inlined():
    objects = render(*CREDENTIALS, *TRITON)
    for (kind, name), doc in objects.items():
        if kind != "Secret":
            assert "tire-test-secret" not in yaml.safe_dump(doc), (kind, name)
    for kind, name in (("Deployment", "tire-triton"), ("Job", "tire-triton-publish")):
        spec = pod_spec(objects, kind, name)
        for container in spec["containers"] + spec.get("initContainers", []):
            env = {e["name"]: e for e in container["env"]}
            expected = {"TIRE_S3_ACCESS_KEY": "accessKey", "TIRE_S3_SECRET_KEY": "secretKey"}
            if container["name"] == "triton":  # Triton's own S3 client reads the repository with AWS_*.
                expected |= {"AWS_ACCESS_KEY_ID": "accessKey", "AWS_SECRET_ACCESS_KEY": "secretKey"}
            for variable, key in expected.items():
                assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "tire-s3", "key": key}
            assert container["envFrom"] == [{"configMapRef": {"name": "tire-triton"}}]
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
        assert spec["automountServiceAccountToken"] is False
    config = objects[("ConfigMap", "tire-triton")]["data"]
    store = StoreSettings.from_env({**config, "TIRE_S3_ACCESS_KEY": "a", "TIRE_S3_SECRET_KEY": "b"})
    assert store.endpoint == "tire-minio:9000" and config["AWS_DEFAULT_REGION"] == store.region

    external = render(*TRITON, "--values", str(CHART / "ci" / "external-s3.yaml"))
    args = pod_spec(external, "Deployment", "tire-triton")["containers"][0]["args"]
    # Triton speaks HTTPS to an S3 endpoint only when its host is prefixed with https://.
    assert args[0] == "--model-repository=s3://https://objects.example.com:443/tire-production/triton"
    env = {e["name"]: e for e in pod_spec(external, "Deployment", "tire-triton")["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "tire-store-credentials",
        "key": "AWS_SECRET_ACCESS_KEY",
    }


def test_triton_accepts_calls_from_the_release_and_scrapes_from_metrics_from():
    objects = render(*CREDENTIALS, *TRITON)
    calls, metrics = objects[("NetworkPolicy", "tire-triton")]["spec"]["ingress"]
    assert {p["port"] for p in calls["ports"]} == {"grpc", "http"}
    (peer,) = calls["from"]
    labels = peer["podSelector"]["matchLabels"]
    for kind, name in (("Deployment", "tire-inpainter"), ("Job", "tire-triton-publish")):
        assert labels.items() <= objects[(kind, name)]["spec"]["template"]["metadata"]["labels"].items()
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--set", "triton.stages={renderer}"), "stages"),
        (("--set", "triton.stages={tracker}"), "tracker.cotrackerCheckpoint"),
        (("--set", "inpainter.model="), "inpainter.model"),
        (("--set", "triton.repository=/models/triton"), "repository"),
    ],
)
def test_a_bad_triton_value_stops_the_render_naming_it(args, named):
    with pytest.raises(RenderError, match=named):
        render(*TRITON, *args)


# --- The web console -------------------------------------------------------------------------------------

WEB_SCENARIO = "web-ingress"
WEB_FIELDS = {name.upper() for name in WebSettings.__dataclass_fields__}


def web_enabled(scenario: str) -> bool:
    values = yaml.safe_load((CHART / "ci" / f"{scenario}.yaml").read_text()) or {}
    return values.get("web", {}).get("enabled", True)


def web_env(objects: dict) -> dict[str, str]:
    """The console's TIRE_WEB_* environment: its ConfigMap, then its container's own entries."""
    container = pod_spec(objects, "Deployment", "tire-web")["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": "tire-web"}}]
    env = dict(objects[("ConfigMap", "tire-web")]["data"])
    env |= {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}
    return {name: value for name, value in env.items() if name.startswith(WEB_PREFIX)}


def web_settings(objects: dict) -> WebSettings:
    return from_env(WebSettings, WEB_PREFIX, web_env(objects))


def minio_env(objects: dict) -> dict[str, str | None]:
    container = pod_spec(objects, "StatefulSet", "tire-minio")["containers"][0]
    return {entry["name"]: entry.get("value") for entry in container["env"]}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_variable_the_chart_sets_for_the_web_is_a_web_setting(scenario):
    objects = render(scenario=scenario)
    if not web_enabled(scenario):
        assert not [key for key in objects if key[1] == "tire-web"]
        return
    env = web_env(objects)
    assert {name.removeprefix(WEB_PREFIX) for name in env} <= WEB_FIELDS, sorted(env)
    container = pod_spec(objects, "Deployment", "tire-web")["containers"][0]
    others = {entry["name"] for entry in container["env"]} - set(env)
    assert others == {"HOME"}, "nothing else, no credentials: people sign in with their own tokens"
    assert not [key for key in objects[("ConfigMap", "tire-web")]["data"] if not key.startswith(WEB_PREFIX)]
    # The values parse as the console parses them at start, and name the coordinator's Service and port.
    settings = web_settings(objects)
    service = objects[("Service", "tire-coordinator")]["spec"]
    assert settings.coordinator == f"tire-coordinator:{service['ports'][0]['port']}"
    assert {"name": "http", "containerPort": settings.port, "protocol": "TCP"} in container["ports"]
    store = StoreSettings.from_env(
        {
            **objects[("ConfigMap", "tire-coordinator")]["data"],
            "TIRE_S3_ACCESS_KEY": "a",
            "TIRE_S3_SECRET_KEY": "b",
        }
    )
    # The console fetches and uploads where the services reach the store, the URL's Host header kept.
    assert settings.store_endpoint == f"{'https' if store.secure else 'http'}://{store.endpoint}"


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if web_enabled(s)])
def test_the_web_console_is_probed_on_healthz_and_readyz(scenario):
    objects = render(scenario=scenario)
    container = pod_spec(objects, "Deployment", "tire-web")["containers"][0]
    # Alive while the process answers; ready while the coordinator answers its health check.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["readinessProbe"]["timeoutSeconds"] > 2, "longer than the console's health call"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    # Locked down as every pod is (test_every_pod_runs_non_root_on_a_read_only_root_filesystem).
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
    service = objects[("Service", "tire-web")]["spec"]
    assert [(p["name"], p["targetPort"]) for p in service["ports"]] == [("http", "http")]
    labels = objects[("Deployment", "tire-web")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()


def test_the_web_ingress_renders_only_when_enabled():
    assert not [key for key in render() if key[0] == "Ingress"]
    objects = render(scenario=WEB_SCENARIO)
    ingresses = [key for key in objects if key[0] == "Ingress"]
    assert ingresses == [("Ingress", "tire-web")]
    spec = objects[("Ingress", "tire-web")]["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["tire.example.com"], "secretName": "tire-web-tls"}]
    (rule,) = spec["rules"]
    assert rule["host"] == "tire.example.com"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    assert path["backend"]["service"] == {"name": "tire-web", "port": {"name": "http"}}
    annotations = objects[("Ingress", "tire-web")]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    # The console's address follows the ingress: https with its TLS, where the cookies are Secure.
    settings = web_settings(objects)
    assert settings.public_url == "https://tire.example.com" and settings.secure_cookies
    # TLS with the controller's default certificate, or none at all.
    default_certificate = render(
        "--set", "web.ingress.enabled=true", "--set", "web.ingress.host=tire.example.com"
    )[("Ingress", "tire-web")]["spec"]
    assert default_certificate["tls"] == [{"hosts": ["tire.example.com"]}]
    plain = render(
        "--set", "web.ingress.enabled=true", "--set", "web.ingress.host=tire.example.com",
        "--set", "web.ingress.tls.enabled=false",
    )  # fmt: skip
    assert "tls" not in plain[("Ingress", "tire-web")]["spec"]
    assert web_settings(plain).public_url == "http://tire.example.com"


def test_web_sessions_stick_to_one_pod_when_there_are_several():
    one = render()
    assert one[("Deployment", "tire-web")]["spec"]["replicas"] == 1
    assert "sessionAffinity" not in one[("Service", "tire-web")]["spec"]
    objects = render("--set", "web.replicas=3")
    assert objects[("Deployment", "tire-web")]["spec"]["replicas"] == 3
    service = objects[("Service", "tire-web")]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    # As long as a session lasts, within Kubernetes' limit of a day.
    assert (
        service["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == web_settings(objects).session_ttl_s
    )
    week = render("--set", "web.replicas=2", "--set", "web.sessionTtlSeconds=604800")
    assert (
        week[("Service", "tire-web")]["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 86400
    )
    assert web_settings(week).session_ttl_s == 604800
    scenario = render(scenario=WEB_SCENARIO)[("Service", "tire-web")]["spec"]
    assert scenario["sessionAffinity"] == "ClientIP"


@pytest.mark.parametrize(
    ("args", "origin"),
    [
        ((), "http://localhost:8080"),
        (("--set", "web.port=9080"), "http://localhost:9080"),
        (("--values", str(CHART / "ci" / f"{WEB_SCENARIO}.yaml")), "https://tire.example.com"),
        (("--set", "web.publicUrl=https://console.example.com/"), "https://console.example.com"),
    ],
)
def test_minio_allows_the_consoles_public_url(args, origin):
    objects = render(*args)
    # Browsers upload straight to MinIO from the console's pages only if MinIO allows the pages' origin.
    assert minio_env(objects)["MINIO_API_CORS_ALLOW_ORIGIN"] == origin
    assert web_settings(objects).public_url == origin


def test_without_the_console_minio_keeps_its_cors_default_and_nothing_of_it_renders():
    objects = render("--set", "web.enabled=false")
    assert "MINIO_API_CORS_ALLOW_ORIGIN" not in minio_env(objects)
    assert not [key for key in objects if "web" in key[1]]
    assert ("Secret", "tire-coordinator-tls") in objects, "the coordinator's TLS is unchanged"


@pytest.mark.parametrize(
    ("args", "origin"),
    [
        ((), ""),
        (("--set", "s3.publicEndpoint=https://s3.example.com"), "https://s3.example.com"),
        (("--set", "s3.publicEndpoint=s3.example.com:9000"), "http://s3.example.com:9000"),
        (("--set", "s3.publicEndpoint=s3.example.com", "--set", "s3.secure=true"), "https://s3.example.com"),
        (("--set", "web.storeOrigin=https://uploads.example.com"), "https://uploads.example.com"),
    ],
)
def test_the_pages_upload_straight_to_the_store_where_presigned_urls_point(args, origin):
    objects = render(*args)
    settings = web_settings(objects)
    # The Content-Security-Policy lets the pages send to the store's public origin; without one (the URLs
    # name an address only the cluster reaches) uploads go through the console.
    assert settings.store_origin == origin
    public = objects[("ConfigMap", "tire-coordinator")]["data"].get("TIRE_S3_PUBLIC_ENDPOINT", "")
    if "web.storeOrigin" not in " ".join(args):
        assert origin.removeprefix("https://").removeprefix("http://") == public.split("://")[-1]
    secure = "s3.secure=true" in args
    assert settings.store_endpoint == f"{'https' if secure else 'http'}://tire-minio:9000"


def test_the_web_trusts_the_coordinators_certificate_and_never_mounts_its_key():
    objects = render(*CREDENTIALS)
    settings = web_settings(objects)
    assert settings.coordinator_plaintext is False
    pod = pod_spec(objects, "Deployment", "tire-web")
    ca = PurePosixPath(settings.coordinator_ca_file)
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if PurePosixPath(m["mountPath"]) == ca.parent]
    assert mount["readOnly"] is True and "subPath" not in mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    # Only the certificate: the key stays with the coordinator.
    assert volume["secret"]["secretName"] == "tire-coordinator-tls"
    assert volume["secret"]["items"] == [{"key": "tls.crt", "path": ca.name}]
    assert volume["secret"]["defaultMode"] == 0o440
    # That CA lets the console reach the coordinator under the name it dials.
    data = decoded(objects[("Secret", "tire-coordinator-tls")])
    host = settings.coordinator.rpartition(":")[0]
    assert host in SERVICE_NAMES
    assert serves_tls_for(data["tls.crt"].encode(), data["tls.key"].encode(), host)

    # Your certificate (cert-manager's Secret): its issuing CA, ca.crt; or a Secret and key you name.
    yours = pod_spec(render(scenario=WEB_SCENARIO), "Deployment", "tire-web")
    secrets = [v["secret"] for v in yours["volumes"] if "secret" in v]
    assert secrets == [
        {"secretName": "tire-api-tls", "defaultMode": 0o440, "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    ]
    named = render(
        "--set", "coordinator.tls.secretName=api-tls", "--set", "web.coordinatorCA.secretName=corporate-ca",
        "--set", "web.coordinatorCA.key=root.pem",
    )  # fmt: skip
    (secret,) = [v["secret"] for v in pod_spec(named, "Deployment", "tire-web")["volumes"] if "secret" in v]
    assert (secret["secretName"], secret["items"]) == (
        "corporate-ca",
        [{"key": "root.pem", "path": "ca.crt"}],
    )


def test_the_web_dials_a_plaintext_coordinator_without_a_ca_and_refuses_mutual_tls():
    objects = render("--set", "coordinator.tls.allowPlaintext=true")
    settings = web_settings(objects)
    assert settings.coordinator_plaintext is True and settings.coordinator_ca_file == ""
    pod = pod_spec(objects, "Deployment", "tire-web")
    assert not [v for v in pod["volumes"] if "secret" in v]
    # The console has no client certificate to present.
    with pytest.raises(RenderError, match="clientCASecret"):
        render("--set", "coordinator.tls.clientCASecret=api-ca")


def test_the_web_accepts_http_from_web_network_policy_from_and_reaches_the_store():
    objects = render()
    labels = objects[("Deployment", "tire-web")]["spec"]["template"]["metadata"]["labels"]
    rule, metrics = objects[("NetworkPolicy", "tire-web")]["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}] and "from" not in rule
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]  # scraped like every service
    (port,) = [
        p
        for p in objects[("Deployment", "tire-web")]["spec"]["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "metrics"
    ]
    assert web_settings(objects).metrics_port == port["containerPort"]
    # MinIO admits the release's pods, the console among them (it fetches what its pages show).
    minio = objects[("NetworkPolicy", "tire-minio")]["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert minio["matchLabels"].items() <= labels.items()
    rule, _ = render(scenario=WEB_SCENARIO)[("NetworkPolicy", "tire-web")]["spec"]["ingress"]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    assert ("NetworkPolicy", "tire-web") not in render(scenario="cpu-only")


def test_a_web_setting_change_rolls_only_the_console():
    before = render(*CREDENTIALS)
    after = render(*CREDENTIALS, "--set", "web.settings.max_sessions=50")
    changed = {key for key in before if before[key] != after[key]} - GENERATED
    assert changed == {("ConfigMap", "tire-web"), ("Deployment", "tire-web")}
    annotations = [
        o[("Deployment", "tire-web")]["spec"]["template"]["metadata"]["annotations"] for o in (before, after)
    ]
    assert annotations[0]["checksum/config"] != annotations[1]["checksum/config"]
    assert web_settings(after).max_sessions == 50


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--set", "web.ingress.enabled=true"), "web.ingress.host"),
        (("--set", "web.publicUrl=ftp://tire.example.com"), "publicUrl"),
        (("--set", "web.storeOrigin=s3.example.com"), "storeOrigin"),
        (("--set", "web.sessionTtlSeconds=10"), "sessionTtlSeconds"),
        (("--set", "web.sesionTtlSeconds=3600"), "sesionTtlSeconds"),
        (("--set", "web.settings.Max-Sessions=3"), "Max-Sessions"),
    ],
)
def test_a_bad_web_value_stops_the_render_naming_it(args, named):
    with pytest.raises(RenderError, match=named):
        render(*args)
