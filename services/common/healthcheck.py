"""The containers' healthcheck: exit 0 when the gRPC server says SERVING (``grpc.health.v1``), 1 if not.

    python -m services.common.healthcheck [HOST:PORT]     # default localhost:50051

One check, no retries (the container engine retries). Every service reports NOT_SERVING while it
warms up (models loaded, kernels compiled) and while it shuts down, so a container is healthy exactly
when it takes calls at full speed. Kubernetes probes the same check natively; compose runs this.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.clients import dial

DEFAULT_ADDRESS = "localhost:50051"
TIMEOUT_S = 3.0


def serving(address: str, timeout_s: float = TIMEOUT_S) -> bool:
    """Whether the server at ``address`` (``HOST:PORT``) answers SERVING for the whole server ("")."""
    with dial(address, retries=0) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return 0 if serving(args[0] if args else DEFAULT_ADDRESS) else 1


if __name__ == "__main__":
    sys.exit(main())
