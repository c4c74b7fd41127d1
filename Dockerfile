# syntax=docker/dockerfile:1
# One image for `billing api` (default), `billing worker` and `billing migrate` (k8s/).
# The base is pinned to a patch release; pin its digest too in your registry mirror.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

# --- build: the pinned runtime dependencies (requirements.lock), then billing itself, in a venv.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first: this layer stays cached while only the code changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-deps --requirement requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir --no-deps . \
 && pip check

# --- runtime: the venv, the migrations and a non-root user; no compiler, no pip cache, no tests.
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="billing" \
      org.opencontainers.image.description="Payments and subscriptions of the API marketplace"
RUN groupadd --system --gid 10001 billing \
 && useradd --system --uid 10001 --gid billing --no-create-home --shell /usr/sbin/nologin billing
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY alembic.ini ./
COPY migrations ./migrations
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=2)"]
CMD ["billing", "api"]
