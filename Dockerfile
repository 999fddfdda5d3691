# syntax=docker/dockerfile:1
#
# bloxproxy container image.
#
#   docker build -t bloxproxy .
#   docker run --rm -p 8080:8080 bloxproxy                          # proxy to Roblox
#   docker run --rm -p 8080:8080 bloxproxy serve --fake-upstream    # no network: bundled fake
#   docker run --rm bloxproxy check                                 # validate config and rules
#
# Configuration is entirely by environment: BLOXPROXY_<SECTION>_<KEY> (docs/CONFIG.md).
# Environment beats the file, so BLOXPROXY_SERVER_HOST=0.0.0.0 below wins over server.host.
# Mount points (see README "Running in a container or as a sidecar"):
#   /etc/bloxproxy/config.yaml  the config read at start ($BLOXPROXY_CONFIG); the image holds
#                               the repository's config.yaml, which is the defaults
#   /etc/bloxproxy/rules        your rule files; read when BLOXPROXY_RULES_PATHS=/etc/bloxproxy/rules
#                               is set, otherwise the rules packaged with bloxproxy are used
# The health check reads BLOXPROXY_SERVER_PORT: change the port with that variable.
# Open files: a Dockerfile cannot set them. Give the container a limit that holds
# server.max_connections (4096 per worker) plus the upstream and Redis pools:
#   docker run --ulimit nofile=65536:65536 ...   (Compose: ulimits.nofile, see docker-compose.yml)
# At start bloxproxy raises its soft limit to the hard one and, if that is still too low,
# lowers its connection cap to fit; both are logged.
#
# tests/test_deploy.py checks this file and runs its entrypoint in a virtual environment built
# the same way (wheel, then a pip-less venv installed from wheels only).

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bloxproxy ./bloxproxy
COPY rules ./rules
# bloxproxy's wheel (with the shipped rules inside it, as bloxproxy/shipped_rules) and one
# wheel per runtime dependency. The dev extras are not built.
RUN pip wheel --wheel-dir /wheels ".[uvloop]"

FROM python:3.11-slim
LABEL org.opencontainers.image.title="bloxproxy" \
      org.opencontainers.image.description="A caching reverse proxy for the Roblox web APIs"
# A venv without pip at /opt/bloxproxy, installed from the builder's wheels and nothing else.
# The wheels are bind-mounted, so none of them stays in a layer; no compiler is needed.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/bloxproxy \
    && python -m pip --python /opt/bloxproxy/bin/python install --no-cache-dir --no-index \
        --disable-pip-version-check --find-links /wheels "bloxproxy[uvloop]" \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin bloxproxy \
    && mkdir -p /etc/bloxproxy/rules
COPY config.yaml /etc/bloxproxy/config.yaml
ENV PATH=/opt/bloxproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BLOXPROXY_CONFIG=/etc/bloxproxy/config.yaml \
    BLOXPROXY_SERVER_HOST=0.0.0.0
WORKDIR /etc/bloxproxy
USER 10001:10001
EXPOSE 8080
# No curl in a slim image: the venv's Python asks /_bloxproxy/healthz (exit 0 healthy, 1 not).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('BLOXPROXY_SERVER_PORT') or '8080'; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/_bloxproxy/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["bloxproxy"]
CMD ["serve"]
