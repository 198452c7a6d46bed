# calibserve: the REST service on the bundled model (runtime dependencies only: no torch, no compilers).
#   docker build -t calibserve .
#   docker run --rm -p 8000:8000 calibserve
# The bundled model is package data of the installed wheel (service/bundled_models/digits, mapped from
# models/digits by pyproject.toml): the default needs no CALIBSERVE_MODEL_PATH. Your own models: mount them
# (e.g. at /app/models) and set CALIBSERVE_MODEL_PATH.
# The base image is an argument so that machines without a registry can build on a local Python image.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
COPY models/digits ./models/digits
# Runtime dependencies only (with psycopg, for a shared PostgreSQL store); then drop what a server never runs: pip itself, setuptools, test suites.
RUN /opt/venv/bin/pip install --no-compile '.[postgres]' \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && find /opt/venv -depth \( -name tests -o -name __pycache__ \) -type d -exec rm -rf {} + \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CALIBSERVE_HOST=0.0.0.0 \
    CALIBSERVE_PORT=8000 \
    CALIBSERVE_DATA_DIR=/data
RUN groupadd --system --gid 10001 calibserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home calibserve \
 && mkdir -p /app/models /data \
 && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
VOLUME ["/data"]
# Slim images have no curl: the check is calibserve's own, reading the same settings as the server.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 CMD ["calibserve", "healthcheck"]
STOPSIGNAL SIGTERM
# Exec form: calibserve is PID 1 and gets SIGTERM; in-flight requests finish, then it exits 0.
ENTRYPOINT ["calibserve", "serve"]
