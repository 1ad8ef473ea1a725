# Triton Inference Server for the stages whose models it serves (inpainter, refiner, tracker; DESIGN.md §5).
# Build from the repository root (deploy/README.md explains the choices):
#   docker build -f deploy/docker/triton.Dockerfile -t tire-triton .
# tritonserver 2.51 and its Python backend come from the nvidia-pytriton wheel, unpacked (not installed: the
# wheel requires numpy < 2), as `make triton` does. The models are the stages' own classes
# (services.<stage>.triton_model), so the image holds those stages' code and their GPU dependencies; the
# weights are not in the image (s3:// in the store, or a mounted /models). It also keeps the `tire` CLI, which
# the chart and compose run from it: `tire models init` and `tire models publish`.
ARG PYTHON_IMAGE=python:3.12-slim-trixie

# CoTracker is not on PyPI: a wheel of its source at a pinned commit (as in tracker.Dockerfile).
FROM ${PYTHON_IMAGE} AS cotracker-wheel
ARG COTRACKER_COMMIT=82e02e8029753ad4ef13cf06be7f4fc5facdda4d
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels \
    "git+https://github.com/facebookresearch/co-tracker@${COTRACKER_COMMIT}"

# tritonserver from the wheel, laid out as the Makefile's `triton` target does under .tools/triton: the
# binaries find their libraries through RPATH ($ORIGIN/../../../nvidia_pytriton.libs), so the layout stays.
# The Python backend's stub for this image's Python goes into backends/python; the other stubs go.
FROM ${PYTHON_IMAGE} AS tritonserver
ARG PYTRITON_VERSION=0.7.0
RUN pip download --no-cache-dir --no-deps --dest /tmp/wheel "nvidia-pytriton==${PYTRITON_VERSION}" \
    && python -m zipfile -e /tmp/wheel/nvidia_pytriton-*.whl /tmp/pytriton \
    && mkdir -p /opt/triton/pytriton \
    && mv /tmp/pytriton/pytriton/tritonserver /opt/triton/pytriton/tritonserver \
    && mv /tmp/pytriton/nvidia_pytriton.libs /opt/triton/nvidia_pytriton.libs \
    && version="$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
    && server=/opt/triton/pytriton/tritonserver \
    && cp "$server/python_backend_stubs/$version/triton_python_backend_stub" "$server/backends/python/" \
    && rm -rf "$server/python_backend_stubs" /tmp/wheel /tmp/pytriton \
    && chmod 0755 "$server"/bin/* "$server/backends/python/triton_python_backend_stub"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY protos/python protos/python
COPY services/__init__.py services/cli.py services/client.py services/stack.py services/
COPY services/common services/common
COPY services/inpainter services/inpainter
COPY services/refiner services/refiner
COPY services/tracker services/tracker
# torch from PyPI is its CUDA build and brings the CUDA runtime libraries as wheels; tritonserver brings
# its own libcudart. tritonclient (for `tire models publish`, which asks Triton to load a version) declares
# protobuf < 7, which the generated stubs need (>= 7.35); its gRPC client runs on protobuf 7, so it goes in
# without its declared dependencies, listed here, as in the Makefile.
RUN --mount=type=bind,from=cotracker-wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/cotracker-*.whl \
    && pip install --no-cache-dir -c constraints.txt '.[diffusion,tracker]' \
    && pip install --no-cache-dir --no-deps -c constraints.txt tritonclient ml_dtypes python-rapidjson \
    && rm -rf build *.egg-info
# The package declares every service's console script; this image runs Triton and the `tire` CLI.
RUN find "$(python -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        -name 'tire*' ! -name 'tire' -delete
COPY --from=tritonserver /opt/triton /opt/triton
# The environment the Python backend's stub runs the models in: numpy 1.26 first (with numpy 2 the stub
# reads every input tensor as zeros, without an error), then this image's packages through a .pth file.
RUN python -m venv --without-pip /opt/triton/env \
    && stub_site="$(/opt/triton/env/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && pip install --no-cache-dir --no-deps --target "$stub_site" numpy==1.26.4 \
    && echo "import site; site.addsitedir('$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')')" \
        > "$stub_site/tire_project.pth" \
    && /opt/triton/env/bin/python -c 'import numpy, services; assert numpy.__version__ < "2", numpy.__version__'
# `tritonserver` on PATH is a wrapper that starts the server as LocalTriton does: the stub environment's bin
# first on PATH (the Python backend's stub runs the first python3 it finds), this interpreter's libpython on
# LD_LIBRARY_PATH, and the wheel's backends. Only the server sees that PATH; `python` and `tire` in this
# image stay the project's interpreter (numpy 2).
RUN mkdir -p /opt/triton/bin \
    && libdir="$(python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')" \
    && printf '%s\n' '#!/bin/sh' \
        'export PATH="/opt/triton/env/bin:$PATH"' \
        "export LD_LIBRARY_PATH=\"$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"" \
        'exec /opt/triton/pytriton/tritonserver/bin/tritonserver --backend-directory=/opt/triton/pytriton/tritonserver/backends "$@"' \
        > /opt/triton/bin/tritonserver \
    && chmod 0755 /opt/triton/bin/tritonserver
# The root filesystem is read-only in the cluster: Triton's copy of an s3:// repository, the weights the
# models download and every cache go to /tmp.
ENV PATH=/opt/triton/bin:$PATH \
    TIRE_TRITON_HOME=/opt/triton \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    NUMBA_CACHE_DIR=/tmp/numba
USER 65532:65532
EXPOSE 8000 8001 8002
# HTTP 8000 (/v2/health/live, /v2/health/ready), gRPC 8001, metrics 8002; give --model-repository and the
# model control flags as arguments (the chart and compose do).
ENTRYPOINT ["tritonserver"]
