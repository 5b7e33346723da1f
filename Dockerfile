# syntax=docker/dockerfile:1
# The official Python image. Our CI, which cannot pull it, builds on a Debian stand-in with
# --build-arg BASE_IMAGE=... (scripts/build-image.sh); users need not set it.
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
# The version the image is labelled with: pyproject.toml's, which scripts/build-image.sh passes
# (by hand: --build-arg VERSION=<pyproject's version>). Any other fails the build here, so the
# label cannot disagree with the package inside.
ARG VERSION
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c 'import sys, tomllib; given = sys.argv[1]; \
  wanted = tomllib.load(open("pyproject.toml", "rb"))["project"]["version"]; \
  sys.exit(None if given == wanted else \
    f"VERSION is {given!r}, pyproject.toml says {wanted}: --build-arg VERSION={wanted}")' \
  "${VERSION:-}"
COPY exporter ./exporter
# pip also compiles the byte code here, so the read-only image never needs to.
RUN pip install --no-cache-dir --prefix=/install .

FROM ${BASE_IMAGE}
ARG VERSION
LABEL org.opencontainers.image.title="bulk-progress-exporter" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="Prometheus exporter for Kizen bulk actions and FirstPromoter batch processes" \
      org.opencontainers.image.licenses="Apache-2.0"
# Flags may be given as arguments (`docker run IMAGE --demo`) or as BULK_EXPORTER_* variables.
# Nothing is written outside the storage volume: the root filesystem may be read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BULK_EXPORTER_CONFIG_FILE=/etc/bulk-progress-exporter/config.yaml \
    BULK_EXPORTER_STORAGE_PATH=/var/lib/bulk-progress-exporter
RUN groupadd --gid 10001 exporter \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin exporter \
    && mkdir -p /var/lib/bulk-progress-exporter \
    && chown 10001:10001 /var/lib/bulk-progress-exporter \
    && chmod 0750 /var/lib/bulk-progress-exporter
COPY --from=build /install /usr/local
# Mount your own configuration over this file, or point BULK_EXPORTER_CONFIG_FILE elsewhere.
COPY config.yaml /etc/bulk-progress-exporter/config.yaml
USER 10001:10001
VOLUME ["/var/lib/bulk-progress-exporter"]
EXPOSE 9840
# Reads the same flags (from the exporter's own command line) and variables as the exporter,
# so a changed listen address, TLS and basic auth are followed; any HTTP answer counts as alive.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-m", "exporter.healthcheck"]
ENTRYPOINT ["bulk-progress-exporter"]
