# The web console (services/web): server-rendered pages on uvicorn, HTTP on 8080 (liveness /healthz,
# readiness /readyz: the coordinator answers its health check). Build from the repository root:
#   docker build -f deploy/docker/web.Dockerfile -t tire-web .
# A client of the coordinator (TIRE_WEB_COORDINATOR) holding no token of its own: people sign in with
# theirs. Signed-in sessions live in the process's memory: several replicas need session affinity.
ARG PYTHON_IMAGE=python:3.12-slim-trixie
ARG NODE_IMAGE=node:24-trixie-slim

# The pages' browser packages (three, Spark) from npm at the Makefile's pins (SPARK_VERSION,
# WEB_THREE_VERSION), as `make install` puts them under .tools/web: ES modules served as they are, no
# build step, no install scripts run. Only node_modules goes into the image, not node.
FROM ${NODE_IMAGE} AS vendor
ARG SPARK_VERSION=2.2.0
ARG THREE_VERSION=0.187.0
RUN npm install --no-audit --no-fund --no-update-notifier --ignore-scripts --prefix /vendor \
        "@sparkjsdev/spark@${SPARK_VERSION}" "three@${THREE_VERSION}"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY protos/python protos/python
# services/client.py: the coordinator's client (credentials, plaintext rule), which the console shares.
COPY services/__init__.py services/client.py services/
COPY services/common services/common
COPY services/web services/web
RUN pip install --no-cache-dir -c constraints.txt '.[web]' && rm -rf build *.egg-info

# The package declares every service's console script; this image has one service's code.
RUN find "$(python -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        -name 'tire*' ! -name 'tire-web' -delete

COPY --from=vendor /vendor/node_modules /opt/web/node_modules
# The root filesystem is read-only in the cluster: anything cached goes to /tmp.
ENV HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba \
    TIRE_WEB_PORT=8080 \
    TIRE_WEB_VENDOR_DIR=/opt/web/node_modules
# What the console serves from files, checked where `tire-web` finds it (the installed package, not the
# source under /app, hence cd /): its templates and scripts (package data) and every file of the npm
# packages above that its pages load. A missing one would otherwise be a 500 or a blank page at run time.
RUN cd / && python -c 'import os; from pathlib import Path; from services.web import app, export; \
    source = Path("/app/services/web"); \
    wanted = [app.HERE / p.relative_to(source) for d in ("templates", "static") for p in (source / d).rglob("*") if p.is_file()]; \
    wanted += [Path(os.environ["TIRE_WEB_VENDOR_DIR"], path) for path in export.VENDOR_FILES]; \
    missing = [str(p) for p in wanted if not p.exists()]; \
    assert not missing, f"not in the image: {missing}"'
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["tire-web"]
