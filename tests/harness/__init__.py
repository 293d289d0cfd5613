"""The harness of the integration tests and the benchmarks: one module per piece, named for it.

Importable as `harness` from tests (pytest puts tests/ on sys.path) and from bench/ (common.py
puts tests/ on sys.path).

- own_names: the unique `bpx-test-<uuid8>-` / `bpx-bench-<uuid8>-` names, and the guard that
  a policy or a clean-up touches only what the run created (libvirtd is shared).
- libvirtd: the shared libvirtd: its URI, the lock against restarts mid-test, reachability,
  stopping and starting it.
- qemu_images: qcow2 chains, overlays and raw bases made with qemu-img, and their content.
- libvirt_lab: the domains and image folder of one test or benchmark (`Lab`), removed even
  when it fails; `stop_domain` / `wait_shut_off`, which return once QEMU has exited.
- ground_truth: block jobs and chains as libvirt reports them on the test's own connection.
- failing_storage: a backing store that can die (qemu-nbd) and a file system that fills (tmpfs).
- policy_files: the one writer of policy YAML.
- recording_host: a Host wrapper that timestamps every action and event (tests and bench).
- in_process_daemon: the real Controller over a real LibvirtHost in a thread.
- daemon_process: the real daemon, `blockpull-exporter run`, as a subprocess.
- prometheus_server: a real Prometheus scraping it.
- fault_subject: the one domain a fault test pulls, its original content and its counters.
- loopback, waiting: free ports on 127.0.0.1; polling with a deadline.
- etcd_cluster: a real 3-member etcd (and etcd's gateway) on loopback ports, for the fleet.
- fleet_lab: simulated hosts sharing a storage group, their daemons, and a sampler of the sums
  over their /metrics.
- delay_proxy: a TCP proxy on loopback that delays what it forwards (no `tc netem` here).
"""
