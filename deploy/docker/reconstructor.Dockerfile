# The reconstructor service. Build from the repository root (deploy/README.md explains the choices):
#   GPU, backend gsplat-optimize:
#     docker build -f deploy/docker/reconstructor.Dockerfile -t tire-reconstructor .
#   CPU, backend colour-solve:
#     docker build -f deploy/docker/reconstructor.Dockerfile --build-arg VARIANT=cpu \
#       -t tire-reconstructor:cpu .
ARG VARIANT=gpu
ARG PYTHON_IMAGE=python:3.12-slim-trixie
# nvcc's major version must be torch's: torch 2.13.0 from PyPI is built with CUDA 13.0.
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04

# gsplat's CUDA kernels, compiled once here into a wheel: the service image then needs no nvcc, no
# writable extension folder and no minutes of compilation at start. CUDA_ARCH_LIST names the GPUs the
# kernels are built for (+PTX: newer ones through the driver's JIT); MAX_JOBS bounds nvcc's memory.
FROM ${CUDA_DEVEL_IMAGE} AS gsplat-wheel
ARG CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0+PTX"
ARG MAX_JOBS=4
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ python3.12-dev python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
COPY constraints.txt /build/
RUN python3.12 -m venv /build/venv \
    && /build/venv/bin/pip install --no-cache-dir -c /build/constraints.txt \
        torch numpy setuptools wheel ninja \
    && TORCH_CUDA_ARCH_LIST="${CUDA_ARCH_LIST}" /build/venv/bin/pip wheel --no-cache-dir \
        --no-build-isolation --no-deps --no-binary gsplat -c /build/constraints.txt --wheel-dir /wheels gsplat

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
COPY services/reconstructor services/reconstructor

FROM base AS runtime-cpu
RUN pip install --no-cache-dir -c constraints.txt . && rm -rf build *.egg-info
ENV TIRE_RECONSTRUCTOR_BACKEND=colour-solve

# torch from PyPI is its CUDA build and brings the CUDA runtime libraries as wheels, so a slim Python
# base is enough (a CUDA runtime base image would hold a second copy); the host's driver comes in
# through the NVIDIA container runtime. libgomp1: gsplat's extension is built with OpenMP.
FROM base AS runtime-gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=gsplat-wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/gsplat-*.whl \
    && pip install --no-cache-dir -c constraints.txt '.[gsplat]' && rm -rf build *.egg-info
ENV TIRE_RECONSTRUCTOR_BACKEND=gsplat-optimize \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM runtime-${VARIANT}
# The package declares every service's console script; this image has one service's code.
RUN find "$(python -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        -name 'tire*' ! -name 'tire-reconstructor' -delete
# The root filesystem is read-only in the cluster: caches (numba's compiled kernels) go to /tmp.
ENV HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba \
    TIRE_RECONSTRUCTOR_PORT=50051 \
    TIRE_RECONSTRUCTOR_METRICS_PORT=9090
# numba's kernels compiled into the image by the stage's own warm-up (its CPU backend), for one CPU
# level that every node has, and copied to NUMBA_CACHE_DIR at start: a new pod compiles nothing
# (services/common/kernel_cache.py).
ENV NUMBA_CPU_NAME=x86-64-v3 \
    NUMBA_CPU_FEATURES= \
    TIRE_NUMBA_CACHE_SEED=/opt/numba-cache
RUN NUMBA_CACHE_DIR=/opt/numba-cache TIRE_RECONSTRUCTOR_BACKEND=colour-solve tire-reconstructor --warm-up-only \
    && chmod -R a+rX /opt/numba-cache
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["tire-reconstructor"]
