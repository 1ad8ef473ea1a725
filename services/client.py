"""A Python client of the coordinator: what ``tire submit``, ``tire watch`` and ``tire get`` do.

    stub = coordinator_stub("localhost:50051", Credentials.from_env())      # TIRE_TOKEN, TIRE_CA_FILE
    asset = upload(stub, [Path("monkey.ply")], "application/x-ply")        # CreateUpload + HTTP PUT
    references = upload(stub, [Path("front.png")], "image/png")
    job = stub.SubmitJob(SubmitJobRequest(spec=JobSpec(asset=AssetRef(frames=asset), ...))).job
    for events in remote_events(stub, job.id): ...                          # WatchJob, reconnecting
    download(stub, finished_job, Path("out"))                               # presigned GETs
    error_details(rpc_error).field_violations                               # a failed call's details

Clients never hold store credentials: files go up and come down through URLs the coordinator signs.
Every call carries the caller's bearer token; over TLS unless the coordinator is on this machine.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import grpc
from tire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from services.common.clients import ErrorDetails, dial, error_details, tls_credentials
from services.common.errors import IntegrityError
from services.common.formats import FORMATS
from services.common.store import BlobStore, addressed_sha256, content_sha256

__all__ = [
    "LOCAL_TOKEN_FILE",
    "Credentials",
    "ErrorDetails",
    "OutputFile",
    "coordinator_stub",
    "download",
    "error_details",
    "output_files",
    "remote_events",
    "save_outputs",
    "upload",
    "uses_plaintext",
]

LOCAL_TOKEN_FILE = Path("out/stack/token")
"""Where ``tire up`` (run from this folder, default ``--state``) writes its principal's token."""
_LOOPBACK = ("localhost", "127.", "::1", "[::1]")


@dataclass(frozen=True)
class Credentials:
    """How a client proves who it is to the coordinator.

    Attributes:
        token: the bearer token ("" sends none: the coordinator answers UNAUTHENTICATED).
        ca_file: PEM certificates that signed the coordinator's ("": the system's trusted roots).
        cert_file, key_file: this client's PEM certificate and key, for a coordinator that asks for one
            (mutual TLS).
        plaintext: no TLS; None means plaintext only for a coordinator on this machine (loopback) with
            no ``ca_file`` given.
    """

    token: str = ""
    ca_file: str = ""
    plaintext: bool | None = None
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def from_env(
        cls,
        token_file: str = "",
        ca_file: str = "",
        plaintext: bool | None = None,
        environ: Mapping = os.environ,
    ) -> Credentials:
        """The token from, in order: ``token_file``, ``TIRE_TOKEN``, the file ``TIRE_TOKEN_FILE`` names,
        ``$XDG_CONFIG_HOME/tire/token`` (``~/.config/tire/token``), ``out/stack/token`` (``tire up``);
        the CA from ``ca_file`` or ``TIRE_CA_FILE``; a client certificate from ``TIRE_CERT_FILE`` and
        ``TIRE_KEY_FILE``."""
        config = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "tire" / "token"
        token = "" if token_file else environ.get("TIRE_TOKEN", "").strip()
        for path in (token_file, environ.get("TIRE_TOKEN_FILE", ""), config, LOCAL_TOKEN_FILE):
            if token:
                break
            if path and Path(path).is_file():
                token = Path(path).read_text().strip()
        return cls(
            token=token,
            ca_file=ca_file or environ.get("TIRE_CA_FILE", ""),
            plaintext=plaintext,
            cert_file=environ.get("TIRE_CERT_FILE", ""),
            key_file=environ.get("TIRE_KEY_FILE", ""),
        )


def coordinator_stub(
    target: str, credentials: Credentials = Credentials()
) -> coordinator_pb2_grpc.CoordinatorServiceStub:
    """A stub of the coordinator at ``target`` whose every call carries ``credentials``' token."""
    if uses_plaintext(target, credentials):
        channel = dial(target, max_message_bytes=64 * 2**20)
        if credentials.token:
            channel = grpc.intercept_channel(channel, _Bearer(credentials.token))
    else:
        tls = tls_credentials(credentials.ca_file, credentials.cert_file, credentials.key_file)
        if credentials.token:
            tls = grpc.composite_channel_credentials(
                tls, grpc.access_token_call_credentials(credentials.token)
            )
        channel = dial(target, max_message_bytes=64 * 2**20, credentials=tls)
    return coordinator_pb2_grpc.CoordinatorServiceStub(channel)


def uses_plaintext(target: str, credentials: Credentials) -> bool:
    """Whether a channel to ``target`` goes without TLS: when ``credentials.plaintext`` says so, or, left
    None, for a coordinator on this machine (loopback) with no CA file given."""
    if credentials.plaintext is not None:
        return credentials.plaintext
    host = target.removeprefix("dns:///").rsplit(":", 1)[0]
    return host.startswith(_LOOPBACK) and not credentials.ca_file


class _CallDetails(
    namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """A call's details with other metadata (gRPC's own class cannot be built)."""


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call on a plaintext (loopback) channel, where gRPC
    refuses call credentials."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        fields = {name: getattr(details, name, None) for name in _CallDetails._fields}
        return _CallDetails(**{**fields, "metadata": [*(fields["metadata"] or ()), self._header]})

    def intercept_unary_unary(self, continuation: Callable, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable, details, request):
        return continuation(self._with_token(details), request)


def upload(stub, paths: list[Path], media_type: str | Sequence[str]) -> list[common_pb2.ObjectRef]:
    """Upload files through the coordinator's presigned URLs; return their references.

    ``media_type``: one for every file, or one per file.
    """
    media_types = [media_type] * len(paths) if isinstance(media_type, str) else list(media_type)
    files = []
    for path, media_type in zip(paths, media_types, strict=True):
        data = path.read_bytes()
        files.append(
            coordinator_pb2.UploadFile(
                name=path.name,
                size_bytes=len(data),
                sha256=content_sha256(data),
                media_type=media_type,
            )
        )
    answer = stub.CreateUpload(coordinator_pb2.CreateUploadRequest(files=files), timeout=30)
    for path, file, item in zip(paths, files, answer.uploads, strict=True):
        if (item.object.sha256, addressed_sha256(item.object.uri)) != (file.sha256, file.sha256):
            raise IntegrityError(
                f"the coordinator named {item.object.uri} for {path}, not its bytes' object."
            )
        if item.needs_upload:
            request = urllib.request.Request(item.put_url, data=path.read_bytes(), method="PUT")
            with urllib.request.urlopen(request, timeout=300) as response:
                response.read()
    return [item.object for item in answer.uploads]


def remote_events(stub, job_id: str) -> Iterator[list[coordinator_pb2.JobEvent]]:
    """WatchJob, reconnecting with ``after_sequence`` when the stream breaks."""
    after = 0
    while True:
        try:
            for response in stub.WatchJob(
                coordinator_pb2.WatchJobRequest(job_id=job_id, after_sequence=after)
            ):
                after = response.event.sequence
                yield [response.event]
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(1.0)


def download(stub, job: coordinator_pb2.Job, out: Path) -> list[Path]:
    """Fetch a finished job's outputs through presigned URLs into ``out``."""

    class Presigned:
        def get_bytes(self, uri: str, **_) -> bytes:
            request = coordinator_pb2.CreateDownloadRequest(job_id=job.id, uris=[uri])
            (item,) = stub.CreateDownload(request, timeout=30).downloads
            with urllib.request.urlopen(item.get_url, timeout=300) as response:
                return response.read()

    return save_outputs(job, Presigned(), out)  # type: ignore[arg-type]


class OutputFile(NamedTuple):
    """One file of a finished job's outputs: its name in an output folder, its object, and what the job
    recorded of it (sha256 "" and size 0 for the ring previews, whose URIs name their sha256)."""

    name: str
    uri: str
    sha256: str = ""
    size_bytes: int = 0


def output_files(job: coordinator_pb2.Job, previews: bool = True) -> list[OutputFile]:
    """A finished job's output files, by the names ``save_outputs`` writes them under: the repaired
    asset in each format (``repaired.ply``, ``repaired.spz``...; ``repaired_TT.<ext>`` per time step of a
    4D job), the contact sheet, change map, turntable and report, then, with ``previews``, each ring's
    mask overlays and inpainted views under ``rings/``."""
    outputs = job.outputs
    frames = outputs.repaired.frames
    files = []

    def repaired(refs, extension: str) -> None:
        for t, ref in enumerate(refs):
            name = f"repaired{extension}" if len(frames) == 1 else f"repaired_{t:02d}{extension}"
            files.append(OutputFile(name, ref.uri, ref.sha256, ref.size_bytes))

    repaired(frames, ".ply")
    for asset in outputs.repaired_formats:
        if asset.format != "ply" and asset.format in FORMATS:  # the .ply is listed above
            repaired(asset.asset.frames, FORMATS[asset.format].extension)
    for name, ref in (
        ("contact_sheet.png", outputs.contact_sheet),
        ("change_map.png", outputs.change_map),
        ("turntable.gif", outputs.turntable),
        ("report.json", outputs.report),
    ):
        files.append(OutputFile(name, ref.uri, ref.sha256, ref.size_bytes))
    for ring in outputs.rings if previews else ():
        prefix = f"rings/t{ring.time_step}_ring{ring.ring}" if len(frames) > 1 else f"rings/ring{ring.ring}"
        for azimuth, overlay, inpainted in zip(
            ring.target_azimuths_deg, ring.unobserved.preview_uris, ring.inpainted.preview_uris, strict=True
        ):
            files.append(OutputFile(f"{prefix}_az{round(azimuth):03d}_mask.png", overlay))
            files.append(OutputFile(f"{prefix}_az{round(azimuth):03d}_inpainted.png", inpainted))
    return files


def save_outputs(job: coordinator_pb2.Job, store: BlobStore, out: Path) -> list[Path]:
    """Write a finished job's outputs (``output_files``) under ``out``; return the paths written.

    Every output is content-addressed: bytes that do not hash to the sha256 its reference (or its URI)
    names are not written.

    Raises:
        IntegrityError: an output's bytes are not the ones the job wrote (replaced in the store), or its
            URI names no sha256 to check them against.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file in output_files(job):
        data = store.get_bytes(file.uri)
        expected = file.sha256 or addressed_sha256(file.uri)
        if expected is None:
            raise IntegrityError(
                f"{file.name}: {file.uri} names no sha256 to check its bytes against; not saved"
            )
        if content_sha256(data) != expected:
            raise IntegrityError(
                f"{file.name}: the bytes at {file.uri} hash to {content_sha256(data)}, not {expected} as the "
                "job wrote them (replaced in the store?); not saved"
            )
        path = out / file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
