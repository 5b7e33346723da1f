# syntax=docker/dockerfile:1
FROM python:3.12-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim-bookworm
LABEL org.opencontainers.image.title="bulk-progress-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Kizen bulk actions and FirstPromoter batch processes"
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter
COPY --from=build /install /usr/local
# Mount your own configuration over this file (see README, "Docker").
COPY config.yaml /etc/bulk-progress-exporter/config.yaml
USER 10001
EXPOSE 9840
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9840/-/healthy', timeout=2)"]
ENTRYPOINT ["bulk-progress-exporter"]
CMD ["--config.file=/etc/bulk-progress-exporter/config.yaml"]
