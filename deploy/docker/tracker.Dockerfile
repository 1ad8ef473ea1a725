# The tracker service. Build from the repository root (deploy/README.md explains the choices):
#   GPU, backend cotracker:
#     docker build -f deploy/docker/tracker.Dockerfile -t tire-tracker .
#   CPU, backend geometric:
#     docker build -f deploy/docker/tracker.Dockerfile --build-arg VARIANT=cpu \
#       -t tire-tracker:cpu .
# CoTracker3's weights are not in the image: mount scaled_offline.pth and point
# TIRE_TRACKER_COTRACKER_CHECKPOINT at it.
ARG VARIANT=gpu
ARG PYTHON_IMAGE=python:3.12-slim-trixie

# CoTracker is not on PyPI: a wheel of its source at a pinned commit (it needs only torch).
FROM ${PYTHON_IMAGE} AS cotracker-wheel
ARG COTRACKER_COMMIT=82e02e8029753ad4ef13cf06be7f4fc5facdda4d
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels \
    "git+https://github.com/facebookresearch/co-tracker@${COTRACKER_COMMIT}"

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY protos/python protos/python
COPY services/__init__.py services/
COPY services/common services/common
COPY services/tracker services/tracker

FROM base AS runtime-cpu
RUN pip install --no-cache-dir -c constraints.txt . && rm -rf build *.egg-info
ENV TIRE_TRACKER_BACKEND=geometric

# torch from PyPI is its CUDA build and brings the CUDA runtime libraries as wheels, so a slim Python
# base is enough (a CUDA runtime base image would hold a second copy); the host's driver comes in
# through the NVIDIA container runtime.
FROM base AS runtime-gpu
RUN --mount=type=bind,from=cotracker-wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/cotracker-*.whl \
    && pip install --no-cache-dir -c constraints.txt '.[tracker]' && rm -rf build *.egg-info
ENV TIRE_TRACKER_BACKEND=cotracker \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM runtime-${VARIANT}
# The triton backend (either variant: the model runs in Triton) calls Triton with tritonclient, which
# declares protobuf < 7 while the generated stubs need 7: installed without its declared dependencies,
# listed here, as in the Makefile.
RUN pip install --no-cache-dir --no-deps -c constraints.txt tritonclient ml_dtypes python-rapidjson
# The package declares every service's console script; this image has one service's code.
RUN find "$(python -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        -name 'tire*' ! -name 'tire-tracker' -delete
# The root filesystem is read-only in the cluster: anything cached goes to /tmp.
ENV HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba \
    TIRE_TRACKER_PORT=50051 \
    TIRE_TRACKER_METRICS_PORT=9090
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["tire-tracker"]
