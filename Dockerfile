# Container image of iris-token-broker: gunicorn serving wsgi:app on port 8080 as an
# unprivileged user. Build it from the repository root:
#   docker build -t iris-token-broker:1.0.0 .
# The image holds no secret. Vault's address, the auth settings and INTERNAL_API_KEYS
# come from the environment at run time (the Helm chart sets them).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1: install the pinned runtime dependencies into a virtual environment, so the
# final image gets them without pip's cache or build files.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-compile -r /tmp/requirements.txt \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# Stage 2: the runtime image.
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GUNICORN_BIND=0.0.0.0:8080
# One gunicorn per container, so SO_REUSEPORT only spreads connections over its workers (about 2x, docs/benchmarks.md).
ENV GUNICORN_REUSE_PORT=true

# A fixed numeric uid and gid, so Kubernetes can check runAsNonRoot without a name lookup.
RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid broker --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin broker

WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# The code stays owned by root, so the service cannot change it.
COPY app.py wsgi.py gunicorn.conf.py ./
COPY broker ./broker
RUN python -m compileall -q /app

USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["gunicorn", "--config", "gunicorn.conf.py"]
CMD ["wsgi:app"]
