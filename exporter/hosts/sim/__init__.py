"""The simulated host: an in-memory libvirt for tests, benchmarks and the demo."""
