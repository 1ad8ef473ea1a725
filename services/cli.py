"""The ``tire`` command.

    tire run ASSET REFERENCE -o OUT            repair in this process (embedded stages, in-memory store)
    tire convert IN OUT [--format F]           a splat file in another format (ply, spz, splat)
    tire up [--triton] [--web-port N] [--postgres]
                                               the local stack: S3 server, five stages, coordinator and
                                               web console (and tritonserver, for the neural stages' models;
                                               PostgreSQL, for the coordinator's jobs)
    tire submit ASSET REFERENCE --coordinator HOST:PORT [--watch] [--webhook URL]
    tire watch JOB | get JOB [-o OUT] | cancel JOB | delete JOB | list     (all take --coordinator)
    tire tokens new NAME [--admin]            a bearer token for principal NAME, and its entry for the
                                               coordinator's tokens file
    tire describe [--coordinator HOST:PORT]   each stage's backend, model, version and device
    tire models push FOLDER s3://BUCKET/PREFIX  put a model folder in the object store (TIRE_S3_*)
    tire models publish STAGE WEIGHTS --repository s3://BUCKET/PREFIX --triton HOST:PORT
                                               the next version of a stage's Triton models, loaded
    tire models list --repository s3://BUCKET/PREFIX --triton HOST:PORT   versions and their state
    tire models init --repository s3://BUCKET/PREFIX  an empty prefix made a repository Triton starts on
    tire models sync STAGE=WEIGHTS... --repository ... --triton ...  publish what is not served yet
    tire models rollback STAGE VERSION --repository ... --triton ...  serve VERSION's weights again

ASSET is a splat file (``.ply``, ``.spz``, ``.splat``; 3D) or a folder of them, time steps in name
order (4D); ``--format`` (repeatable) names the formats of the repaired asset. REFERENCE is an RGBA
PNG of the subject seen from the front, or a folder of them, one per time step.

Commands that call a coordinator send the token of ``--token-file``, ``TIRE_TOKEN``, ``TIRE_TOKEN_FILE``,
``~/.config/tire/token`` or ``out/stack/token`` (``tire up``'s), the first found, over TLS (CA
certificates from ``--ca-file`` or ``TIRE_CA_FILE``) unless the coordinator is on this machine or
``--plaintext`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

import grpc
from tire.v1 import common_pb2, coordinator_pb2

from services.client import (
    LOCAL_TOKEN_FILE,
    Credentials,
    coordinator_stub,
    download,
    error_details,
    remote_events,
    save_outputs,
    upload,
)
from services.common import registry
from services.common.errors import ConfigError, TireError
from services.common.formats import (
    FORMATS,
    WRITABLE,
    detect_format,
    format_of_name,
    read_splats,
    write_splats,
)
from services.common.registry import BASE_PORT, COORDINATOR
from services.common.store import MemoryStore
from services.stack import TRITON_REPOSITORY, WEB, LocalStack, local_ports, local_stack
from services.web.settings import DEFAULT_PORT as DEFAULT_WEB_PORT

DEFAULT_COORDINATOR = COORDINATOR.local_target
# The names of services.embedded.PROFILES, without importing every stage to parse arguments.
PROFILE_NAMES = ("cpu", "paper", "diffusion")
STATES = {
    coordinator_pb2.JOB_STATE_QUEUED: "queued",
    coordinator_pb2.JOB_STATE_RUNNING: "running",
    coordinator_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    coordinator_pb2.JOB_STATE_FAILED: "failed",
    coordinator_pb2.JOB_STATE_CANCELLED: "cancelled",
}


# ----- job specs from the command line ----------------------------------------------------------


def input_files(asset: Path, reference: Path) -> tuple[list[Path], list[Path]]:
    """The asset's frames (splat files, any format of ``FORMATS``) and the reference PNGs, in time
    order."""
    extensions = tuple(spec.extension for spec in FORMATS.values())

    def listing(path: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.name.lower().endswith(suffixes))
        else:
            files = [path]
        if not files or not all(f.is_file() for f in files):
            raise SystemExit(f"tire: no {what} at {path}")
        return files

    frames = listing(asset, extensions, f"asset ({', '.join(extensions)})")
    return frames, listing(reference, (".png",), "reference (.png)")


def frame_media_types(frames: list[Path]) -> list[str]:
    """Each frame's media type, from its format (read from its content, as the coordinator reads it)."""
    try:
        return [FORMATS[detect_format(path.read_bytes(), path.name)].media_type for path in frames]
    except TireError as exc:
        raise SystemExit(f"tire: {exc}") from None


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "asset",
        type=Path,
        help=f"a splat file ({', '.join(FORMATS)}), or a folder of them (one per time step)",
    )
    parser.add_argument("reference", type=Path, help="an RGBA .png, or a folder of them (one per time step)")
    parser.add_argument("--resolution", type=int, default=0, help="view size, pixels (default 256)")
    parser.add_argument("--orbit-step", type=float, default=0.0, help="degrees between views (default 20)")
    parser.add_argument("--elevation", type=float, default=0.0, help="orbit elevation, degrees")
    parser.add_argument(
        "--center",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="the point the orbit circles, world units (default: fitted to the asset)",
    )
    parser.add_argument(
        "--radius", type=float, default=0.0, help="orbit radius, world units (default: fitted to the asset)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="repair an asset that fails the framing checks (flat, outside the orbit), with a warning",
    )
    parser.add_argument(
        "--rings", choices=("fixed", "adaptive", "source-only"), default="fixed", help="ring schedule"
    )
    parser.add_argument("--limits", type=float, nargs="+", help="fixed ring limits, degrees (20 90 180)")
    parser.add_argument("--max-unobserved", type=float, help="adaptive: largest unobserved fraction")
    parser.add_argument(
        "--strength", type=float, default=0.0, help="inpainting strength in (0, 1] (default: the backend's)"
    )
    parser.add_argument(
        "--refine-strength",
        type=float,
        default=0.0,
        help="refinement strength in (0, 1] (default: the backend's)",
    )
    parser.add_argument("--fit-steps", type=int, help="subject-fit steps (LoRA steps; default 400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=list(WRITABLE),
        help="a format to deliver the repaired asset in (repeat for more; default: the asset's own)",
    )


def job_spec(args: argparse.Namespace, frames: list, references: list) -> coordinator_pb2.JobSpec:
    """A JobSpec from the command line; ``frames`` and ``references`` are ObjectRefs in the store."""
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=frames),
        references=references,
        resolution=args.resolution,
        orbit_step_deg=args.orbit_step,
        elevation_deg=args.elevation,
        strength=args.strength,
        refine_strength=args.refine_strength,
        seed=args.seed,
        force=args.force,
        output_formats=args.formats or [],
    )
    if args.center is not None:
        spec.framing.center.extend(args.center)
    if args.radius:
        spec.framing.radius = args.radius
    if args.fit_steps is not None:
        spec.fit.steps = args.fit_steps
    if args.rings == "adaptive":
        spec.rings.adaptive.SetInParent()
        if args.max_unobserved is not None:
            spec.rings.adaptive.max_unobserved_fraction = args.max_unobserved
    elif args.rings == "source-only":
        spec.rings.source_only.SetInParent()
    else:
        spec.rings.fixed.limits_deg.extend(args.limits or [])
    return spec


# ----- tire run: embedded ------------------------------------------------------------------------


def run_embedded(args: argparse.Namespace) -> int:
    from services.coordinator.framing_check import frame_job
    from services.coordinator.jobstore import JobStore
    from services.coordinator.pipeline import JobRunner
    from services.coordinator.spec import resolve_spec
    from services.embedded import embedded_stages

    files, pngs = input_files(args.asset, args.reference)
    store = MemoryStore()
    frames = [
        store.put_bytes(p.read_bytes(), suffix=p.suffix.lower(), media_type=media_type)
        for p, media_type in zip(files, frame_media_types(files), strict=True)
    ]
    references = [store.put_bytes(p.read_bytes(), suffix=".png", media_type="image/png") for p in pngs]
    try:
        spec = frame_job(resolve_spec(job_spec(args, frames, references)), store)
        stages = embedded_stages(store, args.profile)
    except TireError as exc:
        raise SystemExit(f"tire: {exc}") from None

    jobs = JobStore(":memory:")
    job, _ = jobs.create(spec)
    print(f"Repairing {', '.join(map(str, files))} with {args.profile} backends ({len(files)} time step(s))")
    center = ", ".join(f"{c:.3g}" for c in spec.framing.center)
    print(f"Orbit around ({center}) at radius {spec.framing.radius:.3g}")
    start = time.perf_counter()
    runner = threading.Thread(target=JobRunner(jobs, stages, store).run_to_end, args=(job.id,), daemon=True)
    runner.start()
    last = follow(lambda after: _local_events(jobs, job.id, after, runner))
    runner.join()
    job = jobs.get(job.id)
    print(f"\nJob {STATES[job.state]} in {time.perf_counter() - start:.1f} s.")
    if job.state != coordinator_pb2.JOB_STATE_SUCCEEDED:
        print_failure(job.error or last.finished.error, job.failure)
        return 1
    print_outputs(save_outputs(job, store, args.out), args.out)
    return 0


def print_outputs(written: list[Path], out: Path) -> None:
    """The top-level files one per line; the ring pictures as a count."""
    rings = [path for path in written if path.parent.name == "rings"]
    print(f"Outputs in {out}/:")
    for path in written:
        if path not in rings:
            print(f"  {path}")
    if rings:
        print(f"  {out / 'rings'}/  ({len(rings)} PNGs: each ring's unobserved masks and inpainted views)")


def _local_events(jobs, job_id: str, after: int, runner: threading.Thread) -> list[coordinator_pb2.JobEvent]:
    events = jobs.events(job_id, after) or jobs.wait_events(job_id, after, timeout=0.5)
    if not events and not runner.is_alive() and not jobs.events(job_id, after):
        raise SystemExit("tire: the job runner stopped without finishing the job")
    return events


def follow(fetch) -> coordinator_pb2.JobEvent:
    """Print a job's events until its JobFinished event; return that event.

    ``fetch(after_sequence)`` returns the events after a sequence number (possibly none yet).
    """
    after, done, total = 0, 0, 0
    tty = sys.stdout.isatty()
    while True:
        for event in fetch(after):
            after = event.sequence
            kind = event.WhichOneof("kind")
            if kind == "step_finished":
                done += 1
                step = event.step_finished
                label = f"t{step.time_step}/{step.step}" if step.time_step else step.step
                note = "resumed" if step.resumed else f"{step.seconds:.2f} s"
                line = f"[{done:3d}] {label:<28} {note}"
                print(("\r" + line.ljust(72)) if tty else line, end="" if tty else "\n", flush=True)
            elif kind == "ring_progress":
                ring = event.ring_progress
                total = max(total, ring.rings_total)
                if not tty:
                    print(
                        f"      ring {ring.ring}: {ring.targets_done}/{ring.targets_total} targets, "
                        f"mean unobserved fraction {ring.unobserved_fraction:.2f}"
                    )
            elif kind == "warning":
                print(("\n" if tty and done else "") + f"warning: {event.warning.message}", flush=True)
            elif kind == "finished":
                if tty:
                    print()
                return event


# ----- against a running coordinator ------------------------------------------------------------


def watch(stub, job_id: str) -> int:
    stream = remote_events(stub, job_id)
    event = follow(lambda after: next(stream))
    print(f"Job {job_id} {STATES[event.finished.state]}.")
    if event.finished.error:
        print_failure(event.finished.error, event.finished.failure)
    return 0 if event.finished.state == coordinator_pb2.JOB_STATE_SUCCEEDED else 1


def job_summary(job: coordinator_pb2.Job) -> str:
    progress = job.progress
    line = (
        f"{job.id}  {STATES.get(job.state, '?'):<9}  {progress.steps_done}/{progress.steps_total} steps  "
        f"{job.created_at.ToDatetime():%Y-%m-%d %H:%M:%S}"
    )
    return line + (f"\n  error: {job.error}" if job.error else "")


# ----- tire up: the local stack ------------------------------------------------------------------


def stack_up(args: argparse.Namespace) -> int:
    """``tire up``: the local stack until Ctrl-C."""
    state = Path(args.state)
    ports = local_ports(args.port)
    # Ctrl-C stops the stack even when started where SIGINT is ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        web_port = None if args.web_port < 0 else args.web_port
        starting = local_stack(
            state,
            ports,
            timeout_s=args.timeout,
            triton=args.triton,
            web_port=web_port,
            postgres=args.postgres,
        )
        with starting as stack:
            s3 = stack.s3
            print("The local stack is up:")
            for name, port in ports.items():
                print(f"  {name:<14} 127.0.0.1:{port}   metrics http://127.0.0.1:{port + 1000}/metrics")
            print(f"  {'s3':<14} {s3.settings.endpoint}   (logs and state in {state}/)")
            if stack.triton_url:
                repository = f"s3://{s3.bucket}/{TRITON_REPOSITORY}"
                print(f"  {'triton':<14} {stack.triton_url}   repository {repository}")
            if stack.postgres_url:
                # Trust authentication on loopback: the URL holds no password.
                print(f"  {'postgres':<14} {stack.postgres_url}   (the coordinator's jobs)")
            if stack.web_url:
                metrics = stack.environments[WEB]["TIRE_WEB_METRICS_PORT"]
                print(f"  {'web console':<14} {stack.web_url}   metrics http://127.0.0.1:{metrics}/metrics")
            print(
                f"\nSubmit with: tire submit ASSET REFERENCE --coordinator 127.0.0.1:{ports['coordinator']}"
            )
            print(
                f"The store: endpoint http://{s3.settings.endpoint}, bucket {s3.bucket}, access key "
                f"{s3.settings.access_key}, secret key in {stack.store_env} (set -a; . {stack.store_env} "
                "gives tire models and other S3 clients all of TIRE_S3_*)"
            )
            here = stack.token_file.resolve() == LOCAL_TOKEN_FILE.resolve()
            found = "tire finds it from this folder" if here else f"export TIRE_TOKEN_FILE={stack.token_file}"
            print(f"Principal 'local': its token is in {stack.token_file} ({found}); the console's too")
            print("Ctrl-C stops everything.", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
            keep_running(stack)
    except KeyboardInterrupt:
        print("\nStopping...")
        return 0


RESTART_BACKOFF_S = (1.0, 30.0)
"""A service that exits is started again after 1 s, doubling each time it exits within a minute of its
start, up to 30 s: what compose's ``restart: unless-stopped`` and Kubernetes do."""


def keep_running(stack: LocalStack) -> NoReturn:
    """Restart each service of ``stack`` that exits, with backoff and a line saying so, until Ctrl-C."""
    first, longest = RESTART_BACKOFF_S
    delay = dict.fromkeys(stack.processes, first)
    started = dict.fromkeys(stack.processes, time.monotonic())
    due: dict[str, float] = {}
    while True:
        time.sleep(0.5)
        now = time.monotonic()
        for name, process in list(stack.processes.items()):
            if name in due:
                if now >= due[name]:
                    del due[name]
                    started[name] = now
                    stack.restart(name)
                    print(f"tire: {name} started again", file=sys.stderr, flush=True)
                continue
            if process.poll() is None:
                continue
            if now - started[name] > 60:
                delay[name] = first  # it ran a while: a fresh failure, not a crash loop
            due[name] = now + delay[name]
            print(
                f"tire: {name} exited with code {process.returncode}; starting it again in "
                f"{delay[name]:.0f} s (see {stack.state / (name + '.log')})",
                file=sys.stderr,
                flush=True,
            )
            delay[name] = min(delay[name] * 2, longest)


# ----- tire describe -----------------------------------------------------------------------------


def describe(args: argparse.Namespace) -> int:
    if args.coordinator:
        stub = coordinator_stub(args.coordinator, credentials(args))
        info = stub.Describe(common_pb2.DescribeRequest(), timeout=30)
        print(f"coordinator  {info.version}")
        for key, value in sorted(info.settings.items()):
            if key.startswith("stage."):
                print(f"  {key[6:]:<14} {value}")
        return 0
    from services.embedded import embedded_servicers

    for name, servicer in embedded_servicers(MemoryStore(), args.profile).items():
        info = servicer.Describe(common_pb2.DescribeRequest(), None)
        model = f", model {info.model}" if info.model else ""
        print(f"{name:<14} {info.backend} on {info.device}{model} ({info.version})")
    return 0


def push_model(folder: Path, prefix: str) -> int:
    """``tire models push``: upload a model folder to the store named by the ``TIRE_S3_*`` variables."""
    from services.common.store import ObjectStore, StoreSettings

    store = ObjectStore(StoreSettings.from_env())
    uris = store.upload_folder(folder, prefix)
    print(f"{len(uris)} files under {prefix.rstrip('/')}/; set TIRE_<STAGE>_MODEL={prefix.rstrip('/')}")
    return 0


def version_options(pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` options as keywords: a value that parses as JSON is that (``true``, ``256``),
    any other is the string."""
    options = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def publish_models(
    stage: str,
    repository: str,
    triton: str,
    weights: str = "",
    rollback_to: int = 0,
    options: dict | None = None,
) -> int:
    """``tire models publish STAGE WEIGHTS`` / ``rollback STAGE VERSION``: the next version of the
    stage's Triton models (new weights, or an earlier version's settings), written to the repository in
    the store (``TIRE_S3_*``) and loaded by Triton; a version Triton refuses is reported with its reason
    (exit 1) and never takes traffic."""
    from services.common import model_repository
    from services.common.store import ObjectStore, StoreSettings
    from services.common.triton import TritonLoadError

    declared = importlib.import_module(registry.stage(stage).triton_models)
    store = ObjectStore(StoreSettings.from_env())
    try:
        if rollback_to:
            version = model_repository.rollback(store, repository, declared.MODELS, rollback_to, triton)
        else:
            try:
                settings = declared.version_settings(weights, **(options or {}))
            except TypeError as exc:
                raise ConfigError(f"--set: {exc}; see {declared.__name__}.version_settings") from exc
            version = model_repository.publish(store, repository, declared.MODELS, settings, triton)
    except TritonLoadError as exc:
        print(
            f"tire: the new version was not loaded; the one served before keeps serving. {exc}",
            file=sys.stderr,
        )
        return 1
    what = f"version {rollback_to}'s weights" if rollback_to else weights
    print(f"{stage} models version {version} ({what}) published under {repository} and serving")
    return 0


def sync_models(repository: str, triton: str, pairs: list[str]) -> int:
    """``tire models sync STAGE=WEIGHTS...``: publish each stage's weights unless the newest version
    already serves them (so running it again changes nothing), then load a new version on every ready
    Triton behind ``triton`` (a headless Service resolves to each pod). Deployments run it after every
    install and upgrade."""
    from services.common.model_repository import newest_settings
    from services.common.store import ObjectStore, StoreSettings
    from services.common.triton import load_model, ready_servers

    store = ObjectStore(StoreSettings.from_env())
    for pair in pairs:
        stage, _, weights = pair.partition("=")
        if stage not in registry.TRITON_STAGES or not weights:
            raise ConfigError(
                f"{pair!r}: expected STAGE=WEIGHTS, STAGE one of {', '.join(registry.TRITON_STAGES)}"
            )
        declared = importlib.import_module(registry.stage(stage).triton_models)
        version, serving = newest_settings(store, repository, declared.MODELS)
        if serving == declared.version_settings(weights):
            print(f"{stage}: version {version} already serves {weights}; nothing to publish")
            continue
        first, *others = ready_servers(triton)
        if publish_models(stage, repository, first, weights) != 0:
            return 1
        for address in others:
            for model in declared.MODELS:
                load_model(address, model.name)
            print(f"{stage}: loaded on {address}")
    return 0


def init_models(repository: str) -> int:
    """``tire models init``: an empty repository prefix made one Triton can start on."""
    from services.common.model_repository import ensure_repository
    from services.common.store import ObjectStore, StoreSettings

    written = ensure_repository(ObjectStore(StoreSettings.from_env()), repository)
    print(f"{repository}: {'ready for Triton' if written else 'already holds objects; left as it is'}")
    return 0


def list_models(repository: str, triton: str) -> int:
    """``tire models list``: each stage's versions in the repository, and each model version's state in
    Triton."""
    from services.common.model_repository import published_versions
    from services.common.store import ObjectStore, StoreSettings
    from services.common.triton import model_states

    store = ObjectStore(StoreSettings.from_env())
    for stage in registry.TRITON_STAGES:
        models = importlib.import_module(registry.stage(stage).triton_models).MODELS
        published = published_versions(store, repository, models)
        print(f"{stage} under {repository}: versions {', '.join(map(str, published)) or 'none'}")
    for name, version, state, reason in model_states(triton):
        print(f"  {name:<14} version {version or '-':<4} {state:<12} {reason}")
    return 0


def error_lines(exc: grpc.RpcError) -> list[str]:
    """What a failed call's rich error details add to its status line: the fields a BadRequest names,
    and how long RetryInfo says to wait."""
    details = error_details(exc)
    lines = [f"field {field}" for field, _ in details.field_violations]
    if details.retry_after_s is not None:
        lines.append(f"retry after {details.retry_after_s:g} s")
    return lines


def print_failure(error: str, failure: coordinator_pb2.StepFailure) -> None:
    """A failed job's error, then the fields its failure names (a step's fields are those of its stage
    request)."""
    print(f"error: {error}", file=sys.stderr)
    for violation in failure.field_violations:
        print(f"  field {violation.field}", file=sys.stderr)


# ----- credentials --------------------------------------------------------------------------------


def credentials(args: argparse.Namespace) -> Credentials:
    return Credentials.from_env(args.token_file, args.ca_file, args.plaintext)


def new_token_entry(principal: str, admin: bool) -> int:
    """``tire tokens new``: a fresh token on stdout's first line, its entry on the second."""
    from services.coordinator.auth import new_token, token_entry

    token = new_token()
    try:
        entry = token_entry(token, principal, admin)
    except ValueError as exc:
        print(f"tire: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(entry)
    print(
        "Hand the token (first line) to its user; add the entry (second line) to the coordinator's "
        "tokens file (TIRE_COORDINATOR_TOKENS_FILE, the chart's tokens Secret). Only its hash is kept.",
        file=sys.stderr,
    )
    return 0


def convert_file(source: Path, target: Path, format_name: str | None) -> int:
    """``tire convert``: read any splat format, write ``target`` whole or not at all."""
    gaussians = read_splats(source)
    format_name = format_name or format_of_name(target.name)
    data = write_splats(gaussians, format_name)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    partial.replace(target)
    digest = hashlib.sha256(data).hexdigest()
    print(f"{target}: {len(gaussians):,} Gaussians, {format_name}, {len(data):,} bytes, sha256 {digest}")
    return 0


# ----- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tire", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="repair an asset in this process")
    add_spec_arguments(run)
    run.add_argument("-o", "--out", type=Path, default=Path("out/tire"), help="output folder")
    run.add_argument("--profile", choices=PROFILE_NAMES, default="cpu", help="stage backends")

    convert = commands.add_parser("convert", help="convert a splat file to another format, without a job")
    convert.add_argument("source", type=Path, help=f"a splat file ({', '.join(FORMATS)}), read by content")
    convert.add_argument("target", type=Path, help="the file to write; its extension names the format")
    convert.add_argument("--format", choices=list(WRITABLE), help="the target's format, whatever its name")

    up = commands.add_parser("up", help="run the local stack until Ctrl-C")
    up.add_argument(
        "--state",
        default=str(LOCAL_TOKEN_FILE.parent),
        help="folder for the store, job state, token and logs",
    )
    up.add_argument("--timeout", type=float, default=300, help="seconds to wait for every service")
    up.add_argument(
        "--port", type=int, default=BASE_PORT, help="the coordinator's port; stages use the next 5"
    )
    up.add_argument(
        "--triton",
        action="store_true",
        help="run tritonserver too (make triton), with the stages whose models it serves on it",
    )
    up.add_argument(
        "--web-port",
        type=int,
        default=DEFAULT_WEB_PORT,
        help=f"the web console's port (default {DEFAULT_WEB_PORT}; -1: no console)",
    )
    up.add_argument(
        "--postgres",
        action="store_true",
        help="keep the coordinator's jobs in a local PostgreSQL server (its data in STATE/postgres), "
        "not in STATE/coordinator.sqlite",
    )

    submit = commands.add_parser("submit", help="submit a job to a coordinator")
    add_spec_arguments(submit)
    submit.add_argument("--watch", action="store_true", help="follow the job until it ends")
    submit.add_argument("--webhook", default="", help="an https URL the job's state changes are posted to")
    for name, text in (
        ("watch", "follow a job"),
        ("get", "a job's state"),
        ("cancel", "cancel a job"),
        ("delete", "delete a finished job and the files only it uses"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("job_id")
        if name == "get":
            command.add_argument("-o", "--out", type=Path, help="download the outputs into this folder")
    listing = commands.add_parser("list", help="jobs, newest first")
    listing.add_argument("--page-size", type=int, default=20)
    info = commands.add_parser("describe", help="each stage's backend, model, version and device")
    info.add_argument("--profile", choices=PROFILE_NAMES, default="cpu", help="embedded stages")
    models = commands.add_parser("models", help="model folders in the object store, models on Triton")
    actions = models.add_subparsers(dest="action", required=True)
    push = actions.add_parser(
        "push", help="copy a save_pretrained folder to s3://BUCKET/PREFIX, for TIRE_<STAGE>_MODEL"
    )
    push.add_argument("folder", type=Path)
    push.add_argument("prefix", help="s3://BUCKET/PREFIX; use a new prefix for each new model")
    publish = actions.add_parser("publish", help="the next version of a stage's models on Triton, loaded")
    publish.add_argument("stage", choices=registry.TRITON_STAGES, help="whose models Triton serves")
    publish.add_argument("weights", help="the weights' URI: s3://BUCKET/PREFIX (tire models push), a folder")
    publish.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the version, for example trust_remote_code=true (the stage's version_settings)",
    )
    listing_models = actions.add_parser("list", help="the versions in a Triton repository and their state")
    init = actions.add_parser("init", help="make an empty s3://BUCKET/PREFIX a repository Triton starts on")
    sync = actions.add_parser(
        "sync", help="publish each STAGE=WEIGHTS unless its newest version serves them; load on every pod"
    )
    sync.add_argument("stages", nargs="+", metavar="STAGE=WEIGHTS")
    init.add_argument("--repository", required=True, help="Triton's repository: s3://BUCKET/PREFIX")
    rollback = actions.add_parser("rollback", help="publish an earlier version's weights as the next version")
    rollback.add_argument("stage", choices=registry.TRITON_STAGES, help="whose models Triton serves")
    rollback.add_argument("version", type=int, help="the version whose weights to serve again")
    for command in (publish, listing_models, rollback, sync):
        command.add_argument("--repository", required=True, help="Triton's repository: s3://BUCKET/PREFIX")
        command.add_argument("--triton", required=True, help="Triton's gRPC address, HOST:PORT")
    tokens = commands.add_parser("tokens", help="bearer tokens for the coordinator")
    token_actions = tokens.add_subparsers(dest="action", required=True)
    new = token_actions.add_parser("new", help="a new token for a principal, and its tokens-file entry")
    new.add_argument("principal", help="1 to 64 characters of [a-z0-9._@-]")
    new.add_argument("--admin", action="store_true", help="the principal sees every principal's jobs")
    remote = [
        submit,
        listing,
        info,
        *(commands.choices[name] for name in ("watch", "get", "cancel", "delete")),
    ]
    for command in remote:
        if command is info:
            command.add_argument(
                "--coordinator", default="", help="HOST:PORT; without it, the embedded stages"
            )
        else:
            command.add_argument("--coordinator", default=DEFAULT_COORDINATOR, help="HOST:PORT")
        command.add_argument("--token-file", default="", help="a file holding the bearer token")
        command.add_argument("--ca-file", default="", help="PEM certificates that signed the coordinator's")
        command.add_argument(
            "--plaintext", action="store_true", default=None, help="no TLS (default: only on loopback)"
        )
    args = parser.parse_args(argv)

    try:
        if args.command == "run":
            return run_embedded(args)
        if args.command == "convert":
            return convert_file(args.source, args.target, args.format)
        if args.command == "up":
            return stack_up(args)
        if args.command == "describe":
            return describe(args)
        if args.command == "models":
            if args.action == "publish":
                options = version_options(args.set)
                return publish_models(args.stage, args.repository, args.triton, args.weights, options=options)
            if args.action == "sync":
                return sync_models(args.repository, args.triton, args.stages)
            if args.action == "init":
                return init_models(args.repository)
            if args.action == "list":
                return list_models(args.repository, args.triton)
            if args.action == "rollback":
                return publish_models(args.stage, args.repository, args.triton, rollback_to=args.version)
            return push_model(args.folder, args.prefix)
        if args.command == "tokens":
            return new_token_entry(args.principal, args.admin)
        stub = coordinator_stub(args.coordinator, credentials(args))
        if args.command == "submit":
            frames, pngs = input_files(args.asset, args.reference)
            frame_refs = upload(stub, frames, frame_media_types(frames))
            spec = job_spec(args, frame_refs, upload(stub, pngs, "image/png"))
            spec.webhook.url = args.webhook
            job = stub.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec), timeout=30).job
            print(job.id)
            return watch(stub, job.id) if args.watch else 0
        if args.command == "watch":
            return watch(stub, args.job_id)
        if args.command == "get":
            job = stub.GetJob(coordinator_pb2.GetJobRequest(job_id=args.job_id), timeout=30).job
            print(job_summary(job))
            if args.out and job.state == coordinator_pb2.JOB_STATE_SUCCEEDED:
                print_outputs(download(stub, job, args.out), args.out)
            return 0
        if args.command == "cancel":
            job = stub.CancelJob(coordinator_pb2.CancelJobRequest(job_id=args.job_id), timeout=30).job
            print(job_summary(job))
            return 0
        if args.command == "delete":
            answer = stub.DeleteJob(coordinator_pb2.DeleteJobRequest(job_id=args.job_id), timeout=60)
            print(
                f"Deleted {args.job_id}; the {answer.objects_released} objects only it used leave the "
                "store within hours."
            )
            return 0
        if args.command == "list":
            answer = stub.ListJobs(coordinator_pb2.ListJobsRequest(page_size=args.page_size), timeout=30)
            for job in answer.jobs:
                print(job_summary(job))
            return 0
    except grpc.RpcError as exc:
        print(f"tire: {exc.code().name}: {exc.details()}", file=sys.stderr)
        for line in error_lines(exc):
            print(f"  {line}", file=sys.stderr)
        return 2
    except (TireError, ConfigError) as exc:
        print(f"tire: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader stopped early (`tire list | head -1`): no traceback, and nothing more to flush at
        # exit; the status a process killed by SIGPIPE would have.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
