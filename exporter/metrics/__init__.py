"""Prometheus metrics rendered from the published snapshot."""
