# The refiner service. Build from the repository root (deploy/README.md explains the choices):
#   GPU, backend mv-diffusion:
#     docker build -f deploy/docker/refiner.Dockerfile -t tire-refiner .
#   CPU, backend consensus:
#     docker build -f deploy/docker/refiner.Dockerfile --build-arg VARIANT=cpu \
#       -t tire-refiner:cpu .
# The model is not in the image: TIRE_REFINER_MODEL names a mounted folder or an s3:// prefix.
ARG VARIANT=gpu
ARG PYTHON_IMAGE=python:3.12-slim-trixie

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
COPY services/refiner services/refiner

FROM base AS runtime-cpu
RUN pip install --no-cache-dir -c constraints.txt . && rm -rf build *.egg-info
ENV TIRE_REFINER_BACKEND=consensus

# torch from PyPI is its CUDA build and brings the CUDA runtime libraries as wheels, so a slim Python
# base is enough (a CUDA runtime base image would hold a second copy); the host's driver comes in
# through the NVIDIA container runtime.
FROM base AS runtime-gpu
RUN pip install --no-cache-dir -c constraints.txt '.[diffusion]' && rm -rf build *.egg-info
ENV TIRE_REFINER_BACKEND=mv-diffusion \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM runtime-${VARIANT}
# The triton backend (either variant: the model runs in Triton) calls Triton with tritonclient, which
# declares protobuf < 7 while the generated stubs need 7: installed without its declared dependencies,
# listed here, as in the Makefile.
RUN pip install --no-cache-dir --no-deps -c constraints.txt tritonclient ml_dtypes python-rapidjson
# The package declares every service's console script; this image has one service's code.
RUN find "$(python -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        -name 'tire*' ! -name 'tire-refiner' -delete
# The root filesystem is read-only in the cluster: caches (numba's compiled kernels, Hugging Face's
# modules) go to /tmp.
ENV HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    NUMBA_CACHE_DIR=/tmp/numba \
    TIRE_REFINER_PORT=50051 \
    TIRE_REFINER_METRICS_PORT=9090
# numba's kernels compiled into the image by the stage's own warm-up (its CPU backend), for one CPU
# level that every node has, and copied to NUMBA_CACHE_DIR at start: a new pod compiles nothing
# (services/common/kernel_cache.py).
ENV NUMBA_CPU_NAME=x86-64-v3 \
    NUMBA_CPU_FEATURES= \
    TIRE_NUMBA_CACHE_SEED=/opt/numba-cache
RUN NUMBA_CACHE_DIR=/opt/numba-cache TIRE_REFINER_BACKEND=consensus tire-refiner --warm-up-only \
    && chmod -R a+rX /opt/numba-cache
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["tire-refiner"]
