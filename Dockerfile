# syntax=docker/dockerfile:1.7
# The Barge image: the coordinator (barge-coordinator), the agent (barge-agent) and the CLI (barge),
# one Python virtual environment in a slim runtime image without compilers.
#
#   docker build -t barge:dev .
#
# Stage 1 builds wheels (Barge's and any dependency without a binary wheel for this platform);
# stage 2 installs them from those wheels only (no index, no compiler) and runs as a non-root user.
# The agent DaemonSet overrides the user with root plus a few file capabilities (see the chart).
# Without a container engine, devenv/realnode/bargeimage.py builds the equivalent image from Debian
# bookworm packages (mmdebstrap) and the same wheel; the realnode test tier runs it on a real node.

ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only here, for dependencies that ship no wheel for the target platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# What the build backend needs, and nothing else (see .dockerignore): the packages and package data.
COPY pyproject.toml README.md ./
COPY barge ./barge
COPY coordinator ./coordinator
COPY agent ./agent
RUN python -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/barge/bin:$PATH
# The wheels are bind-mounted from the builder, so they add no layer; --no-index makes a missing
# wheel fail the build instead of silently compiling or downloading.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/barge \
 && /opt/barge/bin/pip install --no-index --find-links=/wheels barge \
 && /opt/barge/bin/pip uninstall -y pip \
 && groupadd --system --gid 65532 barge \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin barge \
 && barge --help >/dev/null \
 && test -x /opt/barge/bin/barge-coordinator \
 && test -x /opt/barge/bin/barge-agent

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
# The chart sets the command per component: barge-coordinator or barge-agent.
CMD ["barge", "--help"]

LABEL org.opencontainers.image.title="barge" \
      org.opencontainers.image.description="Deduplicating, encrypting data mover for Velero" \
      org.opencontainers.image.licenses="Apache-2.0"
