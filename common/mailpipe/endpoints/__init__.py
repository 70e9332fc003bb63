"""HTTP endpoints the relay and the operator expose: metrics and health, bounded."""

from .server import METRICS_PATH, Probe, ScrapeEndpoint

__all__ = ["METRICS_PATH", "Probe", "ScrapeEndpoint"]
