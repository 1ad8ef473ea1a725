"""A local Triton Inference Server for development and tests: ``tritonserver`` from ``make triton``.

    with LocalTriton(repository) as triton:          # explicit model control: nothing loads by itself
        triton.load("inpaint")                       # raises TritonLoadError with the server's reason
        client = tritonclient.grpc.InferenceServerClient(triton.url)

``make triton`` unpacks the ``nvidia-pytriton`` wheel (tritonserver 2.51 and its Python backend) under
``.tools/triton`` and prepares the environment the Python backend's stub runs models in
(``.tools/triton/env``: numpy 1.26, then this project's packages; with numpy 2 the stub reads every input
tensor as zeros, without an error). The server process gets that environment's ``bin`` first on
``PATH`` (the stub runs the first ``python3`` it finds) and this interpreter's ``libpython`` on
``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import copy
import os
import queue
import sysconfig
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

import numpy as np

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, TireError, Unavailable
from services.common.local_server import HOST as _HOST
from services.common.local_server import LocalServer, free_port
from services.common.store import StoreSettings

TRITON_HOME = Path(os.environ.get("TIRE_TRITON_HOME", Path(__file__).parents[2] / ".tools" / "triton"))
"""Where ``make triton`` put the server: ``$TIRE_TRITON_HOME``, by default ``.tools/triton``."""


class ServedByTriton:
    """What every stage backend whose models Triton serves has: ``models``, a ``TritonModels``, and from it
    what ``Describe``, the health check and a request's ``model_version`` ask of a backend."""

    models: TritonModels

    @property
    def base_model(self) -> str:
        """The models it calls, as ``triton://host:port/<model>[/version]``."""
        return self.models.uri

    @property
    def device(self) -> str:
        return self.models.describe()

    @property
    def model_version(self) -> str:
        """See ``TritonModels.model_version``."""
        return self.models.model_version

    def pinned(self, version: str) -> Self:
        """This backend held to ``version`` (digits); see ``services.common.server.models_at``."""
        held = copy.copy(self)
        held.models = self.models.pinned(version)
        return held

    def ready(self) -> bool:
        """Whether Triton serves a ready version of every one of its models."""
        return self.models.ready()


CALL_TIMEOUT_S = 3600.0
"""How long a stage service waits for one Triton call (a subject fit is the longest)."""
RECONNECT_BACKOFF_MS = 2000
"""The longest a stage's channel to Triton waits between attempts to reach it again."""
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", -1),  # views and adapters: no limit, as tritonclient's default
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
]
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0


class TritonLoadError(FailedPrecondition):
    """A model version did not load; the message carries the server's reason."""


def triton_repository(store: StoreSettings, repository: str) -> str:
    """Triton's name for the repository ``s3://bucket/prefix`` of ``store``: ``s3://host:port/bucket/prefix``."""
    return f"s3://{store.endpoint}/{repository.removeprefix('s3://')}"


def load_model(url: str, model: str) -> None:
    """Ask the Triton at ``url`` to load (or reload) ``model`` from its repository; returns once the
    versions its policy names are ready.

    Raises:
        TritonLoadError: Triton refused it; the message has Triton's reason. The versions it served
            before keep serving.
    """
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    with triton_grpc.InferenceServerClient(url) as client:
        try:
            client.load_model(model)
        except InferenceServerException as exc:
            raise TritonLoadError(f"Triton did not load model {model!r}: {exc.message()}") from exc


def ready_servers(target: str, wait_s: float = 600.0, poll_s: float = 5.0) -> list[str]:
    """The ready Triton servers at ``target`` (``host:port``; a Kubernetes headless Service's name
    resolves to one address per ready pod), as ``ip:port``; waits up to ``wait_s`` for one.

    Raises:
        Unavailable: none was ready in time.
    """
    import socket

    import tritonclient.grpc as triton_grpc

    host, _, port = target.rpartition(":")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = {info[4][0] for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)}
        except socket.gaierror:
            found = set()
        ready = []
        for ip in sorted(found):
            address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            try:
                with triton_grpc.InferenceServerClient(address) as client:
                    if client.is_server_ready():
                        ready.append(address)
            except Exception:  # starting or going away: not ready
                pass
        if ready:
            return ready
        if time.monotonic() > deadline:
            raise Unavailable(f"no ready Triton at {target} after {wait_s:.0f} s")
        time.sleep(poll_s)


def model_states(url: str) -> list[tuple[str, str, str, str]]:
    """Every model version the Triton at ``url`` knows: (name, version, state, reason), sorted."""
    import tritonclient.grpc as triton_grpc

    with triton_grpc.InferenceServerClient(url) as client:
        index = client.get_model_repository_index().models
    return sorted((m.name, m.version, m.state, m.reason) for m in index)


def triton_binary(home: Path = TRITON_HOME) -> Path:
    """The ``tritonserver`` executable under ``home``.

    Raises:
        FileNotFoundError: not there (run ``make triton``).
    """
    binary = home / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise FileNotFoundError(f"no tritonserver at {binary}: run `make triton`")
    return binary


class LocalTriton(LocalServer):
    """``tritonserver`` on free loopback ports over a model repository, explicit model control.

    Args:
        repository: the model repository (a folder of ``<model>/config.pbtxt`` and ``<model>/<version>/``),
            or Triton's S3 form ``s3://host:port/bucket/prefix`` (credentials: ``AWS_*`` variables).
        home: where ``make triton`` unpacked the server.
        log: where the server's output goes (default: a temporary file, whose tail errors quote).
        store: the object store a repository or weights in ``s3://`` live in: Triton gets its keys as
            ``AWS_*``, the models as ``TIRE_S3_*``.
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        home: Path = TRITON_HOME,
        log: IO[str] | None = None,
        store: StoreSettings | None = None,
    ):
        self.repository = repository if str(repository).startswith("s3://") else Path(repository)
        self.store = store
        self.home = home
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        super().__init__(log, _STOP_TIMEOUT_S)

    @property
    def url(self) -> str:
        """The gRPC address for ``tritonclient.grpc``: ``127.0.0.1:<port>``."""
        return f"{_HOST}:{self.grpc_port}"

    def start(self) -> LocalTriton:
        """Start the server and wait until it is live.

        Raises:
            FileNotFoundError: no server (run ``make triton``).
            RuntimeError: already started, or the server exited or was not live in time (with its log's tail).
        """
        binary = triton_binary(self.home)
        self._spawn(
            [
                str(binary),
                f"--model-repository={self.repository}",
                f"--backend-directory={self.home / 'pytriton' / 'tritonserver' / 'backends'}",
                "--model-control-mode=explicit",
                f"--grpc-address={_HOST}",
                f"--grpc-port={self.grpc_port}",
                f"--http-address={_HOST}",
                f"--http-port={self.http_port}",
                f"--metrics-port={self.metrics_port}",
                "--exit-on-error=false",
            ],
            self._environment(),
            "tritonserver-",
        )
        try:
            self._wait_live()
        except BaseException:
            self.stop()
            raise
        return self

    def load(self, model: str) -> None:
        """``load_model`` on this server."""
        load_model(self.url, model)

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.home / 'env' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        if self.store is not None:
            store = self.store
            scheme = "https" if store.secure else "http"
            env.update(
                AWS_ACCESS_KEY_ID=store.access_key,
                AWS_SECRET_ACCESS_KEY=store.secret_key,
                AWS_DEFAULT_REGION=store.region,
                TIRE_S3_ENDPOINT=f"{scheme}://{store.endpoint}",
                TIRE_S3_ACCESS_KEY=store.access_key,
                TIRE_S3_SECRET_KEY=store.secret_key,
                TIRE_S3_BUCKET=store.bucket,
                TIRE_S3_SECURE=str(store.secure).lower(),
                TIRE_S3_REGION=store.region,
            )
        return env

    def _wait_live(self) -> None:
        import tritonclient.grpc as triton_grpc

        deadline = time.monotonic() + _START_TIMEOUT_S
        with triton_grpc.InferenceServerClient(self.url) as client:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    raise RuntimeError(f"tritonserver exited at start:\n{self.tail()}")
                try:
                    if client.is_server_live():
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"tritonserver was not live after {_START_TIMEOUT_S:.0f} s:\n{self.tail()}")


# -- a stage service's side: calling its models ----------------------------------------------------------


class TritonModels:
    """The models of one stage on a Triton server, held to one version or following the newest ready one.

    Args:
        url: Triton's gRPC address, ``host:port``.
        names: the stage's model names (its ``MODELS``); the first one's versions name the stage's.
        version: the version every call runs ("" for the newest version Triton has ready).

    Raises:
        ImportError: ``tritonclient`` is not installed (at construction, not at the first call).
    """

    def __init__(self, url: str, names: Sequence[str], version: str = "", _client=None):
        import tritonclient.grpc as triton_grpc

        self.url, self.names, self.version = url, tuple(names), version
        # One channel for every unary call (its methods are thread-safe), shared by the pinned copies;
        # streams open their own (start_stream is not). It redials a restarted server within
        # RECONNECT_BACKOFF_MS, not gRPC's default of up to 120 s.
        self.client = _client or triton_grpc.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)

    def pinned(self, version: str) -> TritonModels:
        """These models held to ``version`` (digits)."""
        if not version.isdigit():
            raise InvalidArgument("model_version", version, "must be a Triton model version (digits)")
        return TritonModels(self.url, self.names, version, self.client)

    @property
    def uri(self) -> str:
        """``triton://host:port/<first model>[/version]``, what ``Describe`` reports as the model."""
        return f"triton://{self.url}/{self.names[0]}" + (f"/{self.version}" if self.version else "")

    def describe(self) -> str:
        """Where the models compute, for ``Describe``'s device."""
        return f"triton at {self.url} ({', '.join(self.names)}, version {self.version or 'latest'})"

    @property
    def model_version(self) -> str:
        """The version a call runs: the pinned one, else the newest version of the first model Triton has
        ready ("" when it has none).

        Raises:
            Unavailable: Triton is unreachable.
        """
        if self.version:
            return self.version

        try:
            index = self.client.get_model_repository_index().models
        except Exception as exc:
            raise call_error(exc, "model_version") from exc
        ready = [
            int(m.version)
            for m in index
            if m.name == self.names[0] and m.state == "READY" and m.version.isdigit()
        ]
        return str(max(ready)) if ready else ""

    def ready(self) -> bool:
        """Whether Triton serves a ready version (the pinned one, or any) of every model."""

        try:
            return all(self.client.is_model_ready(name, self.version) for name in self.names)
        except Exception:  # unreachable: not ready
            return False

    def infer(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        invalid: Callable[[str], TireError],
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> Mapping[str, np.ndarray]:
        """One request to model ``name``: ``inputs`` by tensor name (numpy arrays; ``object`` arrays of
        bytes for BYTES) in, every output by name out.

        Raises:
            TireError: ``invalid(Triton's sentence)`` for an input the model refused; ``Unavailable``
                when Triton is unreachable; ``FailedPrecondition`` when it has no ready version.
        """

        try:
            result = self.client.infer(
                name, infer_inputs(inputs), model_version=self.version, client_timeout=timeout_s
            )
        except Exception as exc:
            raise call_error(exc, invalid) from exc
        return {out.name: result.as_numpy(out.name) for out in result.get_response().outputs}

    def stream(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        invalid: Callable[[str], TireError],
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> Iterator[Mapping[str, np.ndarray]]:
        """The responses of the decoupled model ``name`` to one request, as they come (errors: ``infer``)."""
        import tritonclient.grpc as triton_grpc

        answers: queue.Queue = queue.Queue()
        with triton_grpc.InferenceServerClient(self.url) as client:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            try:
                client.async_stream_infer(
                    name, infer_inputs(inputs), model_version=self.version, enable_empty_final_response=True
                )
                while True:
                    result, error = answers.get(timeout=timeout_s)
                    if error is not None:
                        raise call_error(error, invalid)
                    response = result.get_response()
                    if response.outputs:
                        yield {out.name: result.as_numpy(out.name) for out in response.outputs}
                    if response.parameters["triton_final_response"].bool_param:
                        return
            finally:
                client.stop_stream(cancel_requests=True)


_DATATYPES = {
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.float32): "FP32",
    np.dtype(object): "BYTES",
}


def infer_inputs(inputs: Mapping[str, np.ndarray]) -> list:
    """``tritonclient.grpc.InferInput``s of numpy arrays, each typed by its dtype."""
    import tritonclient.grpc as triton_grpc

    made = []
    for name, array in inputs.items():
        value = triton_grpc.InferInput(name, list(array.shape), _DATATYPES[array.dtype])
        value.set_data_from_numpy(np.ascontiguousarray(array))
        made.append(value)
    return made


def call_error(error: Exception, invalid: Callable[[str], TireError] | str) -> TireError:
    """Triton's error as this project's: a refused input is ``invalid(Triton's sentence)`` (or, given a
    field name, INVALID_ARGUMENT naming it); an unreachable server, or one that has not loaded the model
    (yet), UNAVAILABLE (callers retry it); what a model says it does not hold (a reference it has no
    cached copy of) NOT_FOUND; anything else FAILED_PRECONDITION."""
    status = str(getattr(error, "status", lambda: "")() or "")
    message = error.message() if hasattr(error, "message") else str(error)
    if "INVALID_ARGUMENT" in status:
        if isinstance(invalid, str):
            return InvalidArgument(invalid, "the request", f"was refused by the model: {message}")
        return invalid(message)
    if "UNAVAILABLE" in status:
        return Unavailable(f"Triton is unreachable: {message}")
    if "NOT_FOUND" in status and "unknown model" in message:
        # A server that has not loaded the model (yet): just restarted, or loading it.
        return Unavailable(f"Triton does not serve the model now: {message}")
    if "NOT_FOUND" in status:
        return NotFound(f"the model does not hold it: {message}")
    return FailedPrecondition(f"Triton did not run the model: {message}")
