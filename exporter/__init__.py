"""Prometheus exporter for Kizen bulk actions and FirstPromoter batch processes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bulk-progress-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
