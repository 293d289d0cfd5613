"""blockpull-exporter: policy-driven libvirt block pulls, exported as Prometheus metrics."""

__version__ = "0.1.0"
