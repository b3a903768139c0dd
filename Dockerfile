# recon-service: the HTTP reconstruction service (CPU photogrammetry) in one container.
#   docker build -t recon-service .
#   docker run -p 9000:9000 -e RECON_SERVICE_TOKEN=... -v recon-data:/app/data recon-service
# Photos must be visible inside the container under RECON_PHOTOS_ROOT (default /app/data/uploads):
# mount the backend's upload folder there, or set RECON_PHOTOS_ROOT to where you mount it.
#
# Two stages: the first builds the wheel and installs it with the reconstruction stack, at the
# locked versions (requirements.lock), into /opt/venv; the final one copies only that venv: no
# compilers, no dev dependencies, no source tree, no editable install. Build args:
#   EXTRAS=pipeline,s3,celery   (default) the real pipeline, object storage and Celery workers (recon-worker);
#   EXTRAS=s3 the contract double only. docker-compose.yml runs it as an API node, Redis and two workers.

FROM python:3.11-slim AS build
ARG EXTRAS=pipeline,s3,celery
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY recon_service ./recon_service
COPY pipelines ./pipelines
COPY fixtures ./fixtures
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip wheel --no-cache-dir --no-deps -w /wheels . \
    && WHEEL=$(ls /wheels/recon_service-*.whl) \
    && /opt/venv/bin/pip install --no-cache-dir -c requirements.lock "${WHEEL}${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
# open3d links libusb and libgomp (the same system packages scripts/bootstrap.sh installs);
# tini reaps processes and forwards SIGTERM so running jobs are re-queued on `docker stop`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libusb-1.0-0 libgomp1 tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv

RUN useradd --create-home --uid 10001 recon \
    && mkdir -p /app/data/models /app/data/uploads /srv/recon/models /srv/recon/uploads \
    && chown -R recon:recon /app/data /srv/recon
USER recon
WORKDIR /app

ENV PATH=/opt/venv/bin:$PATH \
    RECON_HOST=0.0.0.0 \
    RECON_PORT=9000 \
    RECON_DATA_DIR=/app/data \
    MODEL_OUTPUT_ROOT=/app/data/models \
    RECON_PHOTOS_ROOT=/app/data/uploads \
    PYTHONUNBUFFERED=1
VOLUME ["/app/data"]
EXPOSE 9000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('RECON_PORT', '9000')}/healthz\", timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["recon-service"]
