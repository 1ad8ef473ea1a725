# The coordinator service (CPU only). Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t tire-coordinator .
# The job state (SQLite by default) lives under /var/lib/tire: mount a persistent volume there, or set
# TIRE_COORDINATOR_DATABASE_URL=postgresql://... (and _DATABASE_PASSWORD_FILE) for PostgreSQL.
ARG PYTHON_IMAGE=python:3.12-slim-trixie

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY protos/python protos/python
COPY services/__init__.py services/
COPY services/common services/common
COPY services/coordinator services/coordinator
# The state folder belongs to the service's user, so a fresh named volume mounted there does too.
RUN pip install --no-cache-dir -c constraints.txt . && rm -rf build *.egg-info \
    && mkdir -p /var/lib/tire && chown 65532:65532 /var/lib/tire

# The package declares every service's console script; this image has one service's code.
RUN find "$(python -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        -name 'tire*' ! -name 'tire-coordinator' -delete

ENV HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba \
    TIRE_COORDINATOR_DATABASE_URL=sqlite:///var/lib/tire/coordinator.sqlite \
    TIRE_COORDINATOR_PORT=50051 \
    TIRE_COORDINATOR_METRICS_PORT=9090
USER 65532:65532
VOLUME /var/lib/tire
EXPOSE 50051 9090
ENTRYPOINT ["tire-coordinator"]
