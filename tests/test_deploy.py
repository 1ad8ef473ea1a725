"""The container images and the compose files, checked without Docker.

Each ``deploy/docker/<service>.Dockerfile`` is parsed into its stages, and the image a build produces is
followed for both values of its ``VARIANT`` build argument: who it runs as, what it runs, what it copies
and installs, which backend it defaults to. ``deploy/compose.yaml`` is read as Compose reads it (YAML
merge keys, ``${VAR:-default}`` interpolation) and merged with ``deploy/compose.cpu.yaml`` (and
``deploy/compose.postgres.yaml``) by Compose's rules for the parts these files use (mappings merge,
``!reset`` removes, ``!override`` replaces, sequences append). The web console, an HTTP service and no
gRPC one (not in ``services.common.registry``), has checks of its own.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml

from services.common.config import from_env
from services.common.registry import STAGE_NAMES as STAGES
from services.embedded import PROFILES
from services.inpainter.contract import BACKENDS as INPAINTER_BACKENDS
from services.reconstructor.contract import BACKENDS as RECONSTRUCTOR_BACKENDS
from services.refiner.backends import BACKENDS as REFINER_BACKENDS
from services.renderer.backends import BACKENDS as RENDERER_BACKENDS
from services.tracker.contract import BACKENDS as TRACKER_BACKENDS
from services.tracker.cotracker import INSTALL_COMMAND as COTRACKER_INSTALL_COMMAND
from services.web.settings import ENV_PREFIX as WEB_PREFIX
from services.web.settings import WebSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SERVICES = (*STAGES, "coordinator")
BACKENDS = {
    "renderer": RENDERER_BACKENDS,
    "tracker": TRACKER_BACKENDS,
    "inpainter": INPAINTER_BACKENDS,
    "refiner": REFINER_BACKENDS,
    "reconstructor": RECONSTRUCTOR_BACKENDS,
}
# The stages built from one Dockerfile in two variants: the paper's backends on a GPU, or the CPU ones.
VARIANT_PROFILES = {"gpu": PROFILES["paper"], "cpu": PROFILES["cpu"]}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- Dockerfiles ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One ``FROM`` of a Dockerfile: its base (an image or an earlier stage) and its instructions."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    """A parsed Dockerfile: the ``ARG``s before the first ``FROM`` (with defaults) and the stages."""

    global_args: dict[str, str]
    stages: list[Stage]

    def substitute(self, text: str, build_args: dict[str, str]) -> str:
        """``text`` with ``${NAME}`` of global ARGs replaced, build args first (as in ``FROM`` lines)."""
        values = {**self.global_args, **build_args}
        return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def chain(self, build_args: dict[str, str]) -> list[Stage]:
        """The stages the final image is made of, from the one on an external image to the last."""
        chain = [self.stages[-1]]
        names = {s.name for s in self.stages}
        while (base := self.substitute(chain[0].base, build_args)) in names:
            chain.insert(0, self.stage(base))
        return chain

    def base_image(self, build_args: dict[str, str]) -> str:
        return self.substitute(self.chain(build_args)[0].base, build_args)

    def needed_stages(self, build_args: dict[str, str]) -> set[str]:
        """Names of the stages a BuildKit build of the last stage runs: its chain and what they mount
        or copy ``from=``, recursively (stages nothing refers to are skipped)."""
        todo = [self.stages[-1]]
        needed: set[str] = set()
        while todo:
            stage = todo.pop()
            if stage.name in needed:
                continue
            needed.add(stage.name)
            refs = [self.substitute(stage.base, build_args)]
            refs += [ref for _, args in stage.instructions for ref in re.findall(r"from=([\w.-]+)", args)]
            todo += [s for s in self.stages if s.name in refs]
        return needed

    def instructions(self, build_args: dict[str, str], keyword: str) -> list[str]:
        """Arguments of every ``keyword`` instruction in the final image's stages, in order."""
        return [args for stage in self.chain(build_args) for kw, args in stage.instructions if kw == keyword]

    def env(self, build_args: dict[str, str]) -> dict[str, str]:
        """The final image's environment (``ENV`` in the ``KEY=value`` form, later ones win)."""
        env: dict[str, str] = {}
        for args in self.instructions(build_args, "ENV"):
            env.update(pair.split("=", 1) for pair in args.split())
        return env

    def copy_sources(self) -> list[str]:
        """Sources of every ``COPY`` from the build context (not ``--from`` a stage), in any stage."""
        sources = []
        for stage in self.stages:
            for keyword, args in stage.instructions:
                words = args.split()
                if keyword == "COPY" and not any(w.startswith("--from=") for w in words):
                    sources += [w for w in words if not w.startswith("--")][:-1]
        return sources


def parse_dockerfile(path: Path) -> Dockerfile:
    """Join continued lines, drop comments, split into instructions and those into stages."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if (pending + line).strip():
            logical.append(" ".join((pending + line).split()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage-{len(stages)}"
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: only ARG may come before the first FROM, not {text!r}"
            key, _, default = args.partition("=")
            global_args[key] = default.strip('"')
        else:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(global_args, stages)


DOCKERFILES = {service: parse_dockerfile(DEPLOY / "docker" / f"{service}.Dockerfile") for service in SERVICES}
# (service, build args) of every image the Dockerfiles make: each stage in both variants, the coordinator.
IMAGES = [(stage, {"VARIANT": variant}) for stage in STAGES for variant in VARIANT_PROFILES] + [
    ("coordinator", {})
]
IMAGE_IDS = [f"{service}-{args['VARIANT']}" if args else service for service, args in IMAGES]


def test_each_service_has_one_dockerfile_under_deploy() -> None:
    assert sorted(p.name for p in (DEPLOY / "docker").glob("*.Dockerfile")) == sorted(
        f"{image}.Dockerfile" for image in (*SERVICES, "triton", "web")
    )
    assert not list((ROOT / "services").glob("*/Dockerfile")), "images are built from deploy/docker/ only"


@pytest.mark.parametrize(("service", "build_args"), IMAGES, ids=IMAGE_IDS)
def test_image_runs_its_service_as_non_root(service: str, build_args: dict[str, str]) -> None:
    dockerfile = DOCKERFILES[service]
    user = dockerfile.instructions(build_args, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user} is not a numeric non-root uid"
    assert gid.isdigit() and int(gid) != 0, f"USER {user} is not a numeric non-root gid"

    entrypoint = json.loads(dockerfile.instructions(build_args, "ENTRYPOINT")[-1])
    assert entrypoint == [f"tire-{service}"]
    assert PYPROJECT["project"]["scripts"][f"tire-{service}"] == f"services.{service}.server:main"

    env = dockerfile.env(build_args)
    ports = [env[f"TIRE_{service.upper()}_PORT"], env[f"TIRE_{service.upper()}_METRICS_PORT"]]
    assert dockerfile.instructions(build_args, "EXPOSE")[-1].split() == ports
    # Writable places for a read-only root filesystem: caches under /tmp.
    assert env["HOME"] == "/tmp" and env["NUMBA_CACHE_DIR"].startswith("/tmp/")


@pytest.mark.parametrize(("service", "build_args"), IMAGES, ids=IMAGE_IDS)
def test_image_keeps_only_its_own_console_script(service: str, build_args: dict[str, str]) -> None:
    # The package declares every console script; the others would fail with ModuleNotFoundError here.
    runs = DOCKERFILES[service].instructions(build_args, "RUN")
    deletions = [run for run in runs if "-delete" in run and "sysconfig.get_path" in run]
    assert len(deletions) == 1, f"{service}.Dockerfile does not delete the other services' console scripts"
    assert f"-name 'tire*' ! -name 'tire-{service}' -delete" in deletions[0]
    assert f"tire-{service}" in PYPROJECT["project"]["scripts"]


@pytest.mark.parametrize("service", SERVICES)
def test_image_copies_only_its_own_service(service: str) -> None:
    dockerfile = DOCKERFILES[service]
    sources = dockerfile.copy_sources()
    missing = [source for source in sources if not (ROOT / source).exists()]
    assert not missing, f"{service}.Dockerfile copies paths the repository does not have: {missing}"
    service_folders = {source.split("/")[1] for source in sources if source.startswith("services/")}
    assert service_folders == {"__init__.py", "common", service}

    # Its context ignore file lets in exactly what it copies: nothing else goes to the builder.
    ignore_file = DEPLOY / "docker" / f"{service}.Dockerfile.dockerignore"
    ignore = [line for line in ignore_file.read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*", "the ignore file starts by excluding everything"
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    for source in sources:
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is ignored"
    assert sorted(allowed) == sorted(set(sources))

    # Stages referred to by `from=` exist; every RUN --mount and COPY --from names one.
    names = {stage.name for stage in dockerfile.stages}
    for stage in dockerfile.stages:
        for _, args in stage.instructions:
            assert set(re.findall(r"from=([\w.-]+)", args)) <= names, args


@pytest.mark.parametrize(("service", "build_args"), IMAGES, ids=IMAGE_IDS)
def test_base_images_are_pinned_by_tag(service: str, build_args: dict[str, str]) -> None:
    dockerfile = DOCKERFILES[service]
    names = {stage.name for stage in dockerfile.stages}
    for stage in dockerfile.stages:
        base = dockerfile.substitute(stage.base, build_args)
        if base in names:
            continue
        image, _, tag = base.rpartition(":")
        assert image and tag and tag != "latest" and "/" not in tag, f"{service}: FROM {base} is not pinned"


@pytest.mark.parametrize("variant", VARIANT_PROFILES)
@pytest.mark.parametrize("service", STAGES)
def test_stage_image_defaults_to_its_variants_backend(service: str, variant: str) -> None:
    env = DOCKERFILES[service].env({"VARIANT": variant})
    backend = env[f"TIRE_{service.upper()}_BACKEND"]
    assert backend in BACKENDS[service]
    assert backend == VARIANT_PROFILES[variant].backends[service]


def _installed_extras(dockerfile: Dockerfile, build_args: dict[str, str]) -> set[str]:
    """The extras of this project that the final image's ``pip install`` lines name."""
    runs = " ".join(dockerfile.instructions(build_args, "RUN"))
    assert re.search(r"pip install [^&]* (\.|'\.\[[\w,-]+\]') ", runs + " "), "the image installs the project"
    return {extra for group in re.findall(r"'\.\[([\w,-]+)\]'", runs) for extra in group.split(",")}


@pytest.mark.parametrize("service", STAGES)
def test_gpu_image_installs_cuda_torch_and_cpu_image_no_torch(service: str) -> None:
    dockerfile = DOCKERFILES[service]
    extras = PYPROJECT["project"]["optional-dependencies"]

    gpu = {"VARIANT": "gpu"}
    gpu_extras = _installed_extras(dockerfile, gpu)
    assert any("torch" in extras[name] for name in gpu_extras), f"{service}: no extra brings torch"
    runs = " ".join(dockerfile.instructions(gpu, "RUN"))
    # The CUDA build of torch is PyPI's default; a CPU wheel index would silently make a CPU image.
    assert "--index-url" not in runs and "--extra-index-url" not in runs
    assert "compute" in dockerfile.env(gpu)["NVIDIA_DRIVER_CAPABILITIES"].split(",")

    cpu = {"VARIANT": "cpu"}
    assert _installed_extras(dockerfile, cpu) == set(), "the CPU image installs no extras (no torch)"
    assert "NVIDIA_DRIVER_CAPABILITIES" not in dockerfile.env(cpu)
    # Both run on the slim Python image, and the CPU build does not even run the GPU-only build stages
    # (the CUDA toolchain, git checkouts): every stage it needs starts from that image.
    python_image = dockerfile.global_args["PYTHON_IMAGE"]
    assert dockerfile.base_image(cpu) == dockerfile.base_image(gpu) == python_image
    names = {stage.name for stage in dockerfile.stages}
    for name in dockerfile.needed_stages(cpu):
        assert dockerfile.substitute(dockerfile.stage(name).base, cpu) in names | {python_image}, name


@pytest.mark.parametrize("service", ["renderer", "reconstructor"])
def test_gsplat_kernels_are_compiled_at_build_on_a_cuda_devel_image(service: str) -> None:
    dockerfile = DOCKERFILES[service]
    gpu = {"VARIANT": "gpu"}
    assert "gsplat" in _installed_extras(dockerfile, gpu)
    assert "gsplat-wheel" in dockerfile.needed_stages(gpu)
    builder = dockerfile.stage("gsplat-wheel")
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-devel-ubuntu[\d.]+", dockerfile.substitute(builder.base, gpu))
    build = " ".join(args for keyword, args in builder.instructions if keyword == "RUN")
    assert "TORCH_CUDA_ARCH_LIST=" in build and "--no-binary gsplat" in build
    assert any(kw == "ARG" and args.startswith("CUDA_ARCH_LIST=") for kw, args in builder.instructions)
    mounts = " ".join(dockerfile.instructions(gpu, "RUN"))
    assert "from=gsplat-wheel" in mounts and "/wheels/gsplat-*.whl" in mounts


def test_tracker_image_installs_cotracker_from_a_pinned_commit() -> None:
    dockerfile = DOCKERFILES["tracker"]
    builder = dockerfile.stage("cotracker-wheel")
    commit = next(args for keyword, args in builder.instructions if keyword == "ARG").partition("=")[2]
    assert re.fullmatch(r"[0-9a-f]{40}", commit), f"COTRACKER_COMMIT={commit} is not a full commit id"
    repository = COTRACKER_INSTALL_COMMAND.removeprefix("pip install ")
    build = " ".join(args for keyword, args in builder.instructions if keyword == "RUN")
    assert f"{repository}@${{COTRACKER_COMMIT}}" in build
    assert "from=cotracker-wheel" in " ".join(dockerfile.instructions({"VARIANT": "gpu"}, "RUN"))
    assert not any("scaled_offline" in args for _, args in builder.instructions), "weights are mounted"


def sqlite_path(url: str) -> PurePosixPath:
    """The file of a ``sqlite:///abs/path`` URL (``TIRE_COORDINATOR_DATABASE_URL``)."""
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "sqlite" and not parts.netloc and url.startswith("sqlite:///"), url
    return PurePosixPath(urllib.parse.unquote(parts.path))


def test_coordinator_keeps_its_state_in_a_volume_it_owns() -> None:
    dockerfile = DOCKERFILES["coordinator"]
    env = dockerfile.env({})
    volume = dockerfile.instructions({}, "VOLUME")[-1]
    assert "TIRE_COORDINATOR_STATE_PATH" not in env, "replaced by TIRE_COORDINATOR_DATABASE_URL"
    assert sqlite_path(env["TIRE_COORDINATOR_DATABASE_URL"]).parent == PurePosixPath(volume)
    uid_gid = dockerfile.instructions({}, "USER")[-1]
    assert f"chown {uid_gid} {volume}" in " ".join(dockerfile.instructions({}, "RUN"))


# --- Compose ---------------------------------------------------------------------------------------------


class Reset:
    """Compose's ``!reset``: the attribute is removed from what earlier files set."""


class Override:
    """Compose's ``!override``: ``value`` replaces what earlier files set instead of merging with it."""

    def __init__(self, value: object) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: merge keys (``<<``, as SafeLoader), the ``!reset`` and ``!override``
    tags."""


def _override(loader: ComposeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    return Override(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor("!override", _override)

# An innermost ${...}: its default or message holds no other (Compose nests them: ${A:-x${B:-y}}).
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^${}]*))?\}")
_NAME = re.compile(r"\$\{(\w+)")


def variables(document: object) -> set[str]:
    """Names of the variables interpolated anywhere in ``document``."""
    if isinstance(document, Override):
        return variables(document.value)
    if isinstance(document, dict):
        return set().union(*(variables(v) for v in document.values()))
    if isinstance(document, list):
        return set().union(*(variables(v) for v in document))
    return set(_NAME.findall(document)) if isinstance(document, str) else set()


def interpolate(value: object, environ: dict[str, str]) -> object:
    """``value`` with ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` (and the forms without the
    colon, which test only for unset) replaced as Compose does.

    Raises:
        KeyError: a required variable is unset (``?``), or unset or empty (``:?``).
    """
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, operator, argument = match.groups()
        current = environ.get(name)
        missing = not current if operator and operator.startswith(":") else current is None
        if operator and missing:
            if operator.endswith("?"):
                raise KeyError(name)
            return argument
        return current or ""

    while True:  # innermost first
        value, count = _VARIABLE.subn(replace, value)
        if not count:
            return value


def merge(base: object, override: object) -> object:
    """``override`` laid over ``base``: mappings merge key by key, ``!reset`` removes the key,
    ``!override`` replaces its value, sequences append (as Compose does for ports, volumes and devices),
    scalars replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif isinstance(value, Override):
                merged[key] = value.value
            elif key in merged:
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


def load_compose(*names: str) -> dict:
    documents = [yaml.load((DEPLOY / name).read_text(), Loader=ComposeLoader) for name in names]
    merged = documents[0]
    for document in documents[1:]:
        merged = merge(merged, document)
    return merged


COMPOSE_FILES = ("compose.yaml", "compose.cpu.yaml", "compose.postgres.yaml")
SECRETS = {"MINIO_ROOT_USER": "tire-user", "MINIO_ROOT_PASSWORD": "not-a-real-password"}
GPU = interpolate(load_compose("compose.yaml"), SECRETS)
CPU = interpolate(load_compose("compose.yaml", "compose.cpu.yaml"), SECRETS)
LAYOUTS = {"gpu": GPU, "cpu": CPU}
# With the coordinator's jobs in PostgreSQL (compose.postgres.yaml laid over either layout).
POSTGRES_LAYOUTS = {
    "gpu": interpolate(load_compose("compose.yaml", "compose.postgres.yaml"), SECRETS),
    "cpu": interpolate(load_compose("compose.yaml", "compose.cpu.yaml", "compose.postgres.yaml"), SECRETS),
}


def devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_runs_minio_the_six_services_and_the_console_from_their_dockerfiles() -> None:
    for compose in LAYOUTS.values():
        default = {name for name, service in compose["services"].items() if not service.get("profiles")}
        assert default == {"minio", *SERVICES, "web"}, "the default stack (no profile)"
        assert set(compose["services"]) - default == set(TRITON_SERVICES)
        for service in (*SERVICES, "web"):
            build = compose["services"][service]["build"]
            assert (DEPLOY / build["context"]).resolve() == ROOT
            assert build["dockerfile"] == f"deploy/docker/{service}.Dockerfile"
    for stage in STAGES:
        assert GPU["services"][stage]["build"]["args"]["VARIANT"] == "gpu"
        assert CPU["services"][stage]["build"]["args"]["VARIANT"] == "cpu"
        assert GPU["services"][stage]["image"] != CPU["services"][stage]["image"], "CPU images have their tag"


def test_every_gpu_stage_reserves_one_gpu_of_its_own_and_the_cpu_override_none() -> None:
    gpu_ids = []
    for stage in STAGES:
        (request,) = devices(GPU["services"][stage])
        assert request["driver"] == "nvidia" and "gpu" in request["capabilities"]
        assert ("count" in request) != ("device_ids" in request)
        ids = request.get("device_ids", [])
        assert request.get("count") == 1 or len(ids) == 1
        gpu_ids += ids
    assert len(set(gpu_ids)) == len(gpu_ids) == len(STAGES), "by default each stage has its own GPU"
    assert devices(GPU["services"]["coordinator"]) == devices(GPU["services"]["minio"]) == []
    for name, service in CPU["services"].items():
        assert devices(service) == [], f"{name} still reserves a GPU with the CPU override"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backends_are_the_profiles_and_exist(layout: str) -> None:
    compose = LAYOUTS[layout]
    profile = VARIANT_PROFILES[layout]
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            if key.startswith("TIRE_") and key.endswith("_BACKEND"):
                stage = key.removeprefix("TIRE_").removesuffix("_BACKEND").lower()
                assert stage == name, f"{key} is set on {name}"
                assert value in BACKENDS[stage], f"{key}={value} is not a {stage} backend"
    for stage in STAGES:
        backend = compose["services"][stage]["environment"][f"TIRE_{stage.upper()}_BACKEND"]
        assert backend == profile.backends[stage]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_coordinator_targets_name_the_stage_services_and_their_ports(layout: str) -> None:
    compose = LAYOUTS[layout]
    environment = compose["services"]["coordinator"]["environment"]
    for stage in STAGES:
        target = environment[f"TIRE_COORDINATOR_{stage.upper()}"]
        host, _, port = target.removeprefix("dns:///").rpartition(":")
        assert host == stage and host in compose["services"]
        port_setting = f"TIRE_{stage.upper()}_PORT"
        image_port = DOCKERFILES[stage].env({"VARIANT": layout})[port_setting]
        stage_port = compose["services"][stage]["environment"].get(port_setting, image_port)
        assert port == stage_port, f"the coordinator dials {target}, the {stage} listens on {stage_port}"


def test_store_settings_and_state_volume() -> None:
    store_settings = {f"TIRE_S3_{key}" for key in ("ENDPOINT", "ACCESS_KEY", "SECRET_KEY", "BUCKET")}
    for name in SERVICES:
        assert store_settings <= set(GPU["services"][name]["environment"])
        assert GPU["services"][name]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert GPU["services"]["coordinator"]["volumes"][0] == "coordinator-state:/var/lib/tire"
    assert "coordinator-state" in GPU["volumes"]
    for compose in LAYOUTS.values():
        environment = compose["services"]["coordinator"]["environment"]
        assert sqlite_path(environment["TIRE_COORDINATOR_DATABASE_URL"]).parent == PurePosixPath(
            "/var/lib/tire"
        ), "the SQLite file is on the state volume"
    for stage in ("tracker", "inpainter", "refiner"):
        (mount,) = GPU["services"][stage]["volumes"]
        assert mount.endswith(":/models:ro"), "models are mounted read-only"
        assert CPU["services"][stage].get("volumes", []) == [], "the CPU backends mount no models"


def test_presigned_urls_name_the_published_store_port() -> None:
    coordinator = lambda environ: interpolate(load_compose("compose.yaml"), {**SECRETS, **environ})[
        "services"
    ]["coordinator"]["environment"]["TIRE_S3_PUBLIC_ENDPOINT"]
    assert coordinator({}) == "localhost:9000"
    assert coordinator({"MINIO_HOST_PORT": "19000"}) == "localhost:19000"
    assert coordinator({"TIRE_S3_PUBLIC_ENDPOINT": "gpu-host.example:9000"}) == "gpu-host.example:9000"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_coordinator_checks_tokens_from_a_mounted_folder_and_is_plaintext_on_loopback_only(
    layout: str,
) -> None:
    coordinator = LAYOUTS[layout]["services"]["coordinator"]
    environment = coordinator["environment"]
    # Tokens from a file in a folder of deploy/ mounted read-only (a folder, so a replaced file is seen),
    # never inline in a file that is committed.
    tokens = PurePosixPath(environment["TIRE_COORDINATOR_TOKENS_FILE"])
    mounts = [volume.split(":") for volume in coordinator["volumes"]]
    (mount,) = [mount for mount in mounts if PurePosixPath(mount[1]) == tokens.parent]
    source, _, *options = mount
    assert source.startswith("./") and options == ["ro"], mount
    assert "TIRE_COORDINATOR_TOKENS" not in environment
    # Plaintext is allowed explicitly, so the API port listens on this host's loopback only, whatever
    # TIRE_BIND_ADDRESS says (it still opens MinIO's port to the network).
    assert environment["TIRE_COORDINATOR_ALLOW_PLAINTEXT"] == "1"
    assert not [name for name in environment if name.startswith("TIRE_COORDINATOR_TLS_")]
    for environ in ({}, {"TIRE_BIND_ADDRESS": "0.0.0.0", "TIRE_COORDINATOR_HOST_PORT": "15051"}):
        compose = interpolate(load_compose("compose.yaml"), {**SECRETS, **environ})
        (published,) = compose["services"]["coordinator"]["ports"]
        host, port, container_port = published.split(":")
        assert host == "127.0.0.1" and container_port == "50051"
        assert port == environ.get("TIRE_COORDINATOR_HOST_PORT", "50051")
    exposed = interpolate(load_compose("compose.yaml"), {**SECRETS, "TIRE_BIND_ADDRESS": "0.0.0.0"})
    assert exposed["services"]["minio"]["ports"][0].startswith("0.0.0.0:")


def test_no_token_file_is_committed() -> None:
    # deploy/secrets/ holds the operator's token entries; the repository ships none.
    tracked = subprocess.run(
        ["git", "ls-files", "--", "deploy/secrets"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert tracked.returncode != 0 or tracked.stdout == ""


@pytest.mark.parametrize("layout", LAYOUTS)
def test_services_run_read_only_and_start_in_order_of_readiness(layout: str) -> None:
    services = LAYOUTS[layout]["services"]
    for name in SERVICES:
        service = services[name]
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"], name
        check = service["healthcheck"]["test"]
        assert check[:4] == ["CMD", "python", "-m", "services.common.healthcheck"], name
        port = DOCKERFILES[name].env({"VARIANT": layout})[f"TIRE_{name.upper()}_PORT"]
        assert check[4] == f"localhost:{port}", name
    # The coordinator starts once every stage is warm (healthy), so the first job runs at full speed.
    depends = services["coordinator"]["depends_on"]
    assert {stage: depends[stage]["condition"] for stage in STAGES} == dict.fromkeys(
        STAGES, "service_healthy"
    )


def test_no_literal_secrets_and_every_variable_documented() -> None:
    raw = {name: (DEPLOY / name).read_text() for name in COMPOSE_FILES}
    secret_key = re.compile(r"SECRET|PASSWORD|ACCESS_KEY|ROOT_USER|TOKEN")
    for name, text in raw.items():
        for service, settings in yaml.load(text, Loader=ComposeLoader)["services"].items():
            for key, value in (settings.get("environment") or {}).items():
                required_variable = re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value))
                # A *_FILE variable names where a secret is mounted: a path, not the secret.
                path = key.endswith("_FILE") and str(value).startswith("/")
                assert required_variable or path or not secret_key.search(key), (
                    f"{name}: {service}.{key}={value!r}"
                )
                # No URL carries a password (user:password@host).
                assert not re.search(r"://[^/@\s]*:[^/@\s]*@", str(value)), f"{name}: {service}.{key}"
    # Compose refuses to start without the secrets, and only they are required.
    with pytest.raises(KeyError):
        interpolate(load_compose("compose.yaml"), {})
    required = {m.group(1) for text in raw.values() for m in _VARIABLE.finditer(text) if m.group(2) == ":?"}
    assert required == set(SECRETS)

    example = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    assert example["MINIO_ROOT_PASSWORD"] == "", ".env.example holds no password"
    used = set().union(*(variables(yaml.load(text, Loader=ComposeLoader)) for text in raw.values()))
    assert used == set(example), f"used, not in .env.example: {sorted(used - set(example))}; " + (
        f"in .env.example, unused: {sorted(set(example) - used)}"
    )
    assert ".env" in (DEPLOY / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("layout", POSTGRES_LAYOUTS)
def test_the_postgres_override_puts_the_jobs_in_a_postgres_service_the_coordinator_waits_for(
    layout: str,
) -> None:
    compose = POSTGRES_LAYOUTS[layout]
    services = compose["services"]
    assert set(services) == set(LAYOUTS[layout]["services"]) | {"postgres"}
    postgres, coordinator = services["postgres"], services["coordinator"]
    # A pinned PostgreSQL 15 image, its data on a named volume, not published, healthy when it answers.
    image = postgres["image"]
    assert re.fullmatch(r"postgres:15\.\d+(-\w+)?", image), f"{image} is not pinned to a 15.x release"
    (data,) = postgres["volumes"]
    volume, _, target = data.partition(":")
    assert volume in compose["volumes"] and target == "/var/lib/postgresql/data"
    assert "ports" not in postgres
    check = postgres["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"] and "127.0.0.1" in check, "TCP: ready after the first init"
    assert postgres["restart"] == "unless-stopped"
    # The password is a compose secret (a file under the uncommitted deploy/secrets/), read from a file by
    # both sides: no POSTGRES_PASSWORD, nothing in the coordinator's URL.
    environment = postgres["environment"]
    assert "POSTGRES_PASSWORD" not in environment
    (secret,) = postgres["secrets"]
    assert coordinator["secrets"] == [secret]
    assert compose["secrets"][secret]["file"].startswith("./secrets/")
    mounted = f"/run/secrets/{secret}"
    assert environment["POSTGRES_PASSWORD_FILE"] == mounted
    settings = coordinator["environment"]
    assert settings["TIRE_COORDINATOR_DATABASE_PASSWORD_FILE"] == mounted
    url = urllib.parse.urlsplit(settings["TIRE_COORDINATOR_DATABASE_URL"])
    assert url.scheme == "postgresql" and url.password is None
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert (url.username, url.path) == (environment["POSTGRES_USER"], "/" + environment["POSTGRES_DB"])
    # The coordinator starts once PostgreSQL is healthy, and still after every stage.
    depends = coordinator["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert {name: depends[name] for name in (*STAGES, "minio")} == {
        name: LAYOUTS[layout]["services"]["coordinator"]["depends_on"][name] for name in (*STAGES, "minio")
    }
    # No state volume: the tokens' folder is all it mounts.
    without_state = [
        mount
        for mount in LAYOUTS[layout]["services"]["coordinator"]["volumes"]
        if mount.split(":")[1] != "/var/lib/tire"
    ]
    assert coordinator["volumes"] == without_state and len(without_state) == 1
    # What the override leaves alone is as compose.yaml has it.
    for name in set(services) - {"postgres", "coordinator"}:
        assert services[name] == LAYOUTS[layout]["services"][name], name


def test_the_postgres_override_is_documented() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "compose.postgres.yaml" in readme and "secrets/postgres-password" in readme
    assert "compose.postgres.yaml" in (DEPLOY / "compose.yaml").read_text()


# --- Triton ----------------------------------------------------------------------------------------------

TRITON = parse_dockerfile(DEPLOY / "docker" / "triton.Dockerfile")
# The stages whose models the Triton image serves: the services.<stage>.triton_model modules it copies.
TRITON_IMAGE_STAGES = ("inpainter", "refiner", "tracker")
TRITON_SERVICES = ("triton-init", "triton")


def test_triton_image_runs_tritonserver_as_non_root_with_the_stub_environment() -> None:
    user = TRITON.instructions({}, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert json.loads(TRITON.instructions({}, "ENTRYPOINT")[-1]) == ["tritonserver"]
    assert TRITON.instructions({}, "EXPOSE")[-1].split() == ["8000", "8001", "8002"]
    env = TRITON.env({})
    assert (
        env["HOME"] == "/tmp"
        and env["HF_HOME"].startswith("/tmp/")
        and env["NUMBA_CACHE_DIR"].startswith("/tmp/")
    )
    assert env["PATH"].startswith("/opt/triton/bin:")
    # services.common.triton finds the server here (TIRE_TRITON_HOME), laid out as `make triton` lays it.
    assert env["TIRE_TRITON_HOME"] == "/opt/triton"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    runs = " ".join(TRITON.instructions({}, "RUN"))
    # The wrapper on PATH starts the wheel's server as LocalTriton does: the stub environment first on PATH
    # (the stub runs the first python3), this interpreter's libpython, the wheel's backends.
    assert 'export PATH="/opt/triton/env/bin:$PATH"' in runs and "LD_LIBRARY_PATH" in runs
    assert "/opt/triton/pytriton/tritonserver/bin/tritonserver --backend-directory=" in runs
    # The stub's environment: numpy < 2 (with numpy 2 the stub reads inputs as zeros), then the project.
    assert "numpy==1.26.4" in runs and "tire_project.pth" in runs
    assert 'import numpy, services; assert numpy.__version__ < "2"' in runs
    # The image keeps the `tire` CLI (models init, publish) and no service's console script.
    assert "-name 'tire*' ! -name 'tire' -delete" in runs


def test_triton_image_unpacks_the_pinned_wheel_and_copies_the_stub_for_its_python() -> None:
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"^PYTRITON_VERSION := (\S+)$", makefile, re.MULTILINE).group(1)
    builder = TRITON.stage("tritonserver")
    assert ("ARG", f"PYTRITON_VERSION={pinned}") in builder.instructions, "the Makefile's pin"
    build = " ".join(args for keyword, args in builder.instructions if keyword == "RUN")
    assert "nvidia-pytriton==${PYTRITON_VERSION}" in build and "--no-deps" in build
    assert "python_backend_stubs/$version/triton_python_backend_stub" in build
    assert "backends/python/" in build
    copies = TRITON.instructions({}, "COPY")
    assert "--from=tritonserver /opt/triton /opt/triton" in copies


def test_triton_image_holds_the_stages_whose_models_it_serves() -> None:
    from services.common.registry import TRITON_STAGES

    assert set(TRITON_STAGES) <= set(TRITON_IMAGE_STAGES)
    extras = _installed_extras(TRITON, {})
    optional = PYPROJECT["project"]["optional-dependencies"]
    for stage in TRITON_IMAGE_STAGES:
        # What each stage's GPU image installs, so its triton_model runs the same backend inside Triton.
        assert _installed_extras(DOCKERFILES[stage], {"VARIANT": "gpu"}) <= extras, stage
    assert any("torch" in optional[name] for name in extras)
    runs = " ".join(TRITON.instructions({}, "RUN"))
    assert "from=cotracker-wheel" in runs and "--no-deps -c constraints.txt tritonclient" in runs
    assert (
        TRITON.stage("cotracker-wheel").instructions
        == DOCKERFILES["tracker"].stage("cotracker-wheel").instructions
    )

    sources = TRITON.copy_sources()
    assert not [source for source in sources if not (ROOT / source).exists()]
    folders = {source.split("/")[1] for source in sources if source.startswith("services/")}
    # The CLI and what it imports at start (services.cli imports services.client and services.stack).
    assert folders == {"__init__.py", "cli.py", "client.py", "stack.py", "common", *TRITON_IMAGE_STAGES}
    ignore = [
        line
        for line in (DEPLOY / "docker" / "triton.Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    assert sorted(line[1:] for line in ignore if line.startswith("!")) == sorted(set(sources))
    for stage in TRITON.stages:
        if TRITON.substitute(stage.base, {}) not in {s.name for s in TRITON.stages}:
            image, _, tag = TRITON.substitute(stage.base, {}).rpartition(":")
            assert image and tag and tag != "latest", stage.base
    assert TRITON.base_image({}) == DOCKERFILES["coordinator"].base_image({}), "the same Python base"


@pytest.mark.parametrize("variant", VARIANT_PROFILES)
@pytest.mark.parametrize("stage", TRITON_IMAGE_STAGES)
def test_stage_images_can_call_triton(stage: str, variant: str) -> None:
    # Either variant runs the triton backend: the model runs in Triton, the service needs only tritonclient.
    runs = " ".join(DOCKERFILES[stage].instructions({"VARIANT": variant}, "RUN"))
    assert (
        "pip install --no-cache-dir --no-deps -c constraints.txt tritonclient ml_dtypes python-rapidjson"
        in runs
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compose_triton_profile_serves_the_stages_models(layout: str) -> None:
    services = LAYOUTS[layout]["services"]
    for name in TRITON_SERVICES:
        assert services[name]["profiles"] == ["triton"], name
        assert services[name]["build"]["dockerfile"] == "deploy/docker/triton.Dockerfile"
        assert services[name]["read_only"] is True and services[name]["tmpfs"] == ["/tmp"], name
    init, triton = services["triton-init"], services["triton"]
    # A one-shot: it makes the repository Triton starts on, then exits; Triton waits for it.
    assert "restart" not in init
    script = " ".join(init["command"])
    assert "ensure_bucket()" in script and "tire models init --repository" in script
    assert triton["depends_on"]["triton-init"]["condition"] == "service_completed_successfully"
    assert triton["depends_on"]["minio"]["condition"] == "service_healthy"
    repository = next(arg for arg in triton["command"] if arg.startswith("--model-repository="))
    assert repository == "--model-repository=s3://minio:9000/tire/triton"
    assert script.endswith("--repository s3://tire/triton"), "init and server name the same prefix"
    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(triton["command"])
    check = " ".join(triton["healthcheck"]["test"])
    assert "http://localhost:8000/v2/health/ready" in check
    assert triton["environment"]["AWS_SECRET_ACCESS_KEY"] == SECRETS["MINIO_ROOT_PASSWORD"]
    assert triton["environment"]["TIRE_S3_ENDPOINT"] == "minio:9000"
    assert triton["shm_size"] == "2gb"
    gpus = devices(triton)
    assert (len(gpus) == 1) if layout == "gpu" else gpus == []

    for stage in TRITON_IMAGE_STAGES:
        environment = services[stage]["environment"]
        assert environment[f"TIRE_{stage.upper()}_TRITON_URL"] == "triton:8001"
        # Waits for Triton only when the triton profile is on.
        assert services[stage]["depends_on"]["triton"] == {"condition": "service_healthy", "required": False}
        assert services[stage]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_compose_stage_backends_switch_to_triton_from_the_environment() -> None:
    environ = {**SECRETS, "TIRE_INPAINTER_BACKEND": "triton", "TIRE_TRACKER_BACKEND": "triton"}
    for names in (("compose.yaml",), ("compose.yaml", "compose.cpu.yaml")):
        services = interpolate(load_compose(*names), environ)["services"]
        assert services["inpainter"]["environment"]["TIRE_INPAINTER_BACKEND"] == "triton"
        assert services["tracker"]["environment"]["TIRE_TRACKER_BACKEND"] == "triton"
        assert "triton" in BACKENDS["inpainter"]
        default = VARIANT_PROFILES["cpu" if len(names) == 2 else "gpu"].backends["refiner"]
        assert services["refiner"]["environment"]["TIRE_REFINER_BACKEND"] == default


# --- The web console -------------------------------------------------------------------------------------

WEB = parse_dockerfile(DEPLOY / "docker" / "web.Dockerfile")
# What the console's image holds of the repository: its own folder, what every service shares, and the
# coordinator's client (credentials and the plaintext rule), which it shares with the CLI.
WEB_IMAGE_CODE = {"__init__.py", "client.py", "common", "web"}


def _web_image_port() -> str:
    return WEB.env({})[f"{WEB_PREFIX}PORT"]


def test_web_image_runs_the_console_as_non_root_on_a_read_only_root() -> None:
    user = WEB.instructions({}, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, user
    assert json.loads(WEB.instructions({}, "ENTRYPOINT")[-1]) == ["tire-web"]
    assert PYPROJECT["project"]["scripts"]["tire-web"] == "services.web.server:main"
    runs = WEB.instructions({}, "RUN")
    deletions = [run for run in runs if "-delete" in run and "sysconfig.get_path" in run]
    assert len(deletions) == 1 and "-name 'tire*' ! -name 'tire-web' -delete" in deletions[0]
    # Its extra, nothing more (no torch): the console only serves pages and calls the coordinator.
    assert _installed_extras(WEB, {}) == {"web"}
    assert "torch" not in " ".join(PYPROJECT["project"]["optional-dependencies"]["web"])

    env = WEB.env({})
    assert env["HOME"] == "/tmp" and env["NUMBA_CACHE_DIR"].startswith("/tmp/")
    # Every TIRE_WEB_* variable of the image is a setting, and the image's environment starts the console.
    settings = from_env(WebSettings, WEB_PREFIX, env)
    fields = {f.upper() for f in WebSettings.__dataclass_fields__}
    assert {key.removeprefix(WEB_PREFIX) for key in env if key.startswith(WEB_PREFIX)} <= fields
    assert WEB.instructions({}, "EXPOSE")[-1].split() == [str(settings.port)]
    assert settings.port == WebSettings().port == 8080
    # No HEALTHCHECK, like the other images: compose and the chart probe /healthz and /readyz themselves.
    assert not WEB.instructions({}, "HEALTHCHECK")


def test_web_image_installs_the_makefiles_npm_pins_into_its_vendor_folder() -> None:
    makefile = (ROOT / "Makefile").read_text()
    pins = {
        name: re.search(rf"^{name} := (\S+)$", makefile, re.MULTILINE).group(1)
        for name in ("SPARK_VERSION", "WEB_THREE_VERSION")
    }
    vendor = WEB.stage("vendor")
    assert ("ARG", f"SPARK_VERSION={pins['SPARK_VERSION']}") in vendor.instructions
    assert ("ARG", f"THREE_VERSION={pins['WEB_THREE_VERSION']}") in vendor.instructions
    (install,) = [args for keyword, args in vendor.instructions if keyword == "RUN"]
    assert install.startswith("npm install ") and "--ignore-scripts" in install
    assert '"@sparkjsdev/spark@${SPARK_VERSION}"' in install and '"three@${THREE_VERSION}"' in install
    prefix = re.search(r"--prefix (\S+)", install).group(1)
    # Only node_modules comes into the image, where TIRE_WEB_VENDOR_DIR points; node itself stays behind.
    copies = [args.split() for args in WEB.instructions({}, "COPY") if args.startswith("--from=vendor ")]
    assert copies == [["--from=vendor", f"{prefix}/node_modules", WEB.env({})[f"{WEB_PREFIX}VENDOR_DIR"]]]
    assert WEB.base_image({}) == DOCKERFILES["coordinator"].base_image({}), "the same Python base"
    assert "vendor" in WEB.needed_stages({})
    for stage in WEB.stages:
        if stage.name == "vendor" or WEB.substitute(stage.base, {}) not in {s.name for s in WEB.stages}:
            image, _, tag = WEB.substitute(stage.base, {}).rpartition(":")
            assert image and tag and tag != "latest" and "/" not in tag, stage.base
    # The build checks the installed package and the vendor folder against what the pages load.
    check = next(run for run in WEB.instructions({}, "RUN") if "VENDOR_FILES" in run)
    assert check.startswith("cd / && python -c"), "checked where tire-web imports it from, not /app"


def _imported_services_modules(path: Path) -> set[str]:
    """The ``services.<name>`` modules and packages ``path`` imports, anywhere in it (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name.split(".")[1] for name in names if name.startswith("services.") and name.count(".") >= 1}


def test_web_image_copies_what_the_console_imports_and_nothing_else() -> None:
    sources = WEB.copy_sources()
    assert not [source for source in sources if not (ROOT / source).exists()]
    folders = {source.split("/")[1] for source in sources if source.startswith("services/")}
    assert folders == WEB_IMAGE_CODE
    # Every module the image holds imports only what the image holds (lazy imports too).
    copied = {name.removesuffix(".py") for name in WEB_IMAGE_CODE - {"__init__.py"}}
    modules = [
        path
        for source in sources
        if source.startswith("services/")
        for path in ([ROOT / source] if source.endswith(".py") else (ROOT / source).rglob("*.py"))
        if "tests" not in path.relative_to(ROOT).parts
    ]
    assert ROOT / "services" / "web" / "server.py" in modules
    for path in modules:
        for name in _imported_services_modules(path):
            assert name in copied, f"{path.relative_to(ROOT)} imports services.{name}, not in the image"

    ignore = [
        line
        for line in (DEPLOY / "docker" / "web.Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*" and "**/tests" in ignore
    assert sorted(line[1:] for line in ignore if line.startswith("!")) == sorted(set(sources))


def test_the_consoles_templates_and_scripts_are_package_data() -> None:
    # The image installs the package, not the source tree: files the app reads beside its modules (its
    # templates, its ES modules and styles) reach site-packages only as declared package data. The image's
    # build checks the same; this says it before a build does.
    package_data = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    patterns = [*package_data.get("services.web", []), *package_data.get("*", [])]
    web = ROOT / "services" / "web"
    declared = {path for pattern in patterns for path in web.glob(pattern)}
    files = [
        path for folder in ("templates", "static") for path in (web / folder).rglob("*") if path.is_file()
    ]
    assert files
    missing = sorted(str(path.relative_to(web)) for path in files if path not in declared)
    assert not missing, f"not in pyproject.toml's [tool.setuptools.package-data] for services.web: {missing}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compose_web_console_reaches_the_coordinator_and_runs_locked_down(layout: str) -> None:
    services = LAYOUTS[layout]["services"]
    web = services["web"]
    assert web["build"]["dockerfile"] == "deploy/docker/web.Dockerfile"
    assert web["read_only"] is True and web["tmpfs"] == ["/tmp"]
    assert web["cap_drop"] == ["ALL"] and web["security_opt"] == ["no-new-privileges:true"]
    assert devices(web) == []

    environment = web["environment"]
    # Every variable is a WebSettings field, and the values start the console.
    fields = {name.upper() for name in WebSettings.__dataclass_fields__}
    assert all(key.startswith(WEB_PREFIX) for key in environment), sorted(environment)
    assert {key.removeprefix(WEB_PREFIX) for key in environment} <= fields
    settings = from_env(WebSettings, WEB_PREFIX, environment)
    # The console holds no credentials: people sign in with their own tokens, and it reads the store only
    # through presigned URLs.
    assert not [key for key in environment if re.search(r"TOKEN|SECRET|ACCESS_KEY|PASSWORD", key)]

    # It dials the coordinator's service and port, plaintext as the coordinator serves on this network.
    host, _, port = settings.coordinator.removeprefix("dns:///").rpartition(":")
    assert host == "coordinator" and host in services
    coordinator_port = DOCKERFILES["coordinator"].env({})["TIRE_COORDINATOR_PORT"]
    assert port == services["coordinator"]["environment"].get("TIRE_COORDINATOR_PORT", coordinator_port)
    assert settings.coordinator_plaintext is True
    assert services["coordinator"]["environment"]["TIRE_COORDINATOR_ALLOW_PLAINTEXT"] == "1"
    assert web["depends_on"] == {"coordinator": {"condition": "service_healthy"}}
    # It reaches the store at MinIO's service, the presigned URLs' Host header kept.
    store = re.fullmatch(r"http://(\w+):(\d+)", settings.store_endpoint)
    assert store and store[1] == "minio" and services["minio"]["command"][-1] == "/data"
    assert services["minio"]["ports"][0].endswith(f":{store[2]}")

    # Healthy while the process answers (liveness), on the port the image listens on.
    image_port = _web_image_port()
    assert str(settings.port) == image_port
    check = web["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    assert "urllib.request.urlopen(" in check[3] and f"'http://localhost:{image_port}/healthz'" in check[3]
    assert web["healthcheck"]["start_period"] != "600s", "no model to load"
    (published,) = web["ports"]
    assert published == f"127.0.0.1:8080:{image_port}"


@pytest.mark.parametrize(
    ("environ", "public_url", "store_origin"),
    [
        ({}, "http://localhost:8080", "http://localhost:9000"),
        (
            {"TIRE_WEB_HOST_PORT": "18080", "MINIO_HOST_PORT": "19000"},
            "http://localhost:18080",
            "http://localhost:19000",
        ),
        (
            {
                "TIRE_WEB_PUBLIC_URL": "https://tire.example.com",
                "TIRE_S3_PUBLIC_ENDPOINT": "gpu-host.example:9000",
            },
            "https://tire.example.com",
            "http://gpu-host.example:9000",
        ),
        (
            {"TIRE_WEB_STORE_ORIGIN": "https://s3.example.com"},
            "http://localhost:8080",
            "https://s3.example.com",
        ),
    ],
)
def test_minio_allows_the_consoles_origin_and_the_console_the_stores(
    environ: dict[str, str], public_url: str, store_origin: str
) -> None:
    services = interpolate(load_compose("compose.yaml"), {**SECRETS, **environ})["services"]
    web = services["web"]["environment"]
    # Browsers upload straight to MinIO from the console's pages only if MinIO allows the pages' origin.
    assert services["minio"]["environment"]["MINIO_API_CORS_ALLOW_ORIGIN"] == web["TIRE_WEB_PUBLIC_URL"]
    assert web["TIRE_WEB_PUBLIC_URL"] == public_url
    # The console's published port is the one its default address names.
    host_port = services["web"]["ports"][0].split(":")[1]
    assert environ.get("TIRE_WEB_PUBLIC_URL") or public_url.endswith(f":{host_port}")
    # The pages may send to the store where the coordinator's presigned URLs point.
    assert web["TIRE_WEB_STORE_ORIGIN"] == store_origin
    if "TIRE_WEB_STORE_ORIGIN" not in environ:
        public_endpoint = services["coordinator"]["environment"]["TIRE_S3_PUBLIC_ENDPOINT"]
        assert store_origin == f"http://{public_endpoint}"
    settings = from_env(WebSettings, WEB_PREFIX, web)
    assert (settings.public_url, settings.store_origin) == (public_url, store_origin)
