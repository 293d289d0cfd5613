"""`blockpull-exporter run`: the daemon.

Signals only put a wake-up in the controller's inbox (SimpleQueue.put is safe in a signal
handler) or set the web server's reload flag; the loops act on them. SIGHUP reloads the policy
and the web config; SIGTERM and SIGINT stop the daemon, leaving running pulls to QEMU unless
--shutdown.abort-pulls is given.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from exporter import __version__
from exporter.commands import options as cli_options

log = logging.getLogger(__name__)


def _listen_address(text: str) -> str:
    from exporter.web.server import ListenAddressError, parse_listen_address

    try:
        parse_listen_address(text)
    except ListenAddressError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from exporter.web.server import DEFAULT_LISTEN_ADDRESS

    cli_options.add_policy_file(parser)
    cli_options.add_libvirt_uri(parser)
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=DEFAULT_LISTEN_ADDRESS,
        type=_listen_address,
        metavar="ADDRESS",
        help=f"address to serve /metrics on (default: {DEFAULT_LISTEN_ADDRESS})",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="FILE",
        help="exporter-toolkit web config: TLS and basic auth (default: plain HTTP)",
    )
    cli_options.add_state_dir(parser)
    parser.add_argument(
        "--resync.interval",
        dest="resync_interval",
        type=cli_options.seconds_between(1, 86400),
        default=30.0,
        metavar="SECONDS",
        help="full re-read of the host even without events, 1 to 86400 (default: 30)",
    )
    parser.add_argument(
        "--progress.interval",
        dest="progress_interval",
        type=cli_options.seconds_between(0.1, 3600),
        default=2.0,
        metavar="SECONDS",
        help="refresh of running pulls' progress, 0.1 to 3600 (default: 2)",
    )
    parser.add_argument(
        "--shutdown.abort-pulls",
        dest="abort_on_shutdown",
        action="store_true",
        help="abort the daemon's running pulls on exit (default: leave them running; "
        "they are adopted on the next start)",
    )
    parser.add_argument(
        "--coordination.url",
        dest="coordination_url",
        default=None,
        metavar="URL",
        help="tooz backend URL of the coordination service that the policy's shared groups "
        "are budgeted through, e.g. etcd3+http://127.0.0.1:2379 (default: none; a policy "
        "with shared groups then refuses to start)",
    )
    parser.add_argument(
        "--coordination.lease-ttl",
        dest="coordination_lease_ttl",
        type=cli_options.seconds_between(3, 600),
        default=30.0,
        metavar="SECONDS",
        help="lease time-to-live of this host's group membership and slots: a dead host's "
        "share passes on within it, and a host cut off from the service stops its group "
        "pulls before it ends; 3 to 600 (default: 30)",
    )
    cli_options.add_logging(parser)


def main(args: argparse.Namespace) -> int:
    from exporter.core.clock import SystemClock
    from exporter.daemon.controller import Controller, ControllerOptions, Reload, Shutdown
    from exporter.daemon.hold_store import HoldStore
    from exporter.daemon.sd_notify import Notifier
    from exporter.daemon.state_store import StateStore
    from exporter.hosts import open_host
    from exporter.metrics.renderer import MetricsRenderer
    from exporter.policy.loader import PolicyError
    from exporter.policy.source import PolicySource
    from exporter.web.config import WebConfigError, load_web_config
    from exporter.web.landing import render_landing_page
    from exporter.web.server import WebServer

    cli_options.setup_logging(args)
    try:
        source = PolicySource(args.policy_file)
    except PolicyError as error:
        print(f"blockpull-exporter: invalid policy, not starting:\n{error}", file=sys.stderr)
        return 1
    try:
        web_config = load_web_config(args.web_config_file) if args.web_config_file else None
    except WebConfigError as error:
        print(f"blockpull-exporter: {error}", file=sys.stderr)
        return 1

    if source.policy.shared and args.coordination_url is None:
        names = ", ".join(group.name for group in source.policy.shared)
        print(
            f"blockpull-exporter: {args.policy_file}: shared groups ({names}) need a "
            "coordination service: give --coordination.url (e.g. etcd3+http://127.0.0.1:2379), "
            "or remove the `shared` section",
            file=sys.stderr,
        )
        return 1
    if args.coordination_url is not None:
        from exporter.fleet import url_problem

        problem = url_problem(args.coordination_url)
        if problem is not None:
            print(f"blockpull-exporter: --coordination.url: {problem}", file=sys.stderr)
            return 1

    clock = SystemClock()
    host = open_host(args.libvirt_uri, clock)
    coordinator = None
    if args.coordination_url is not None:
        from exporter.fleet import open_coordinator

        coordinator = open_coordinator(
            args.coordination_url, round(args.coordination_lease_ttl), clock
        )
    controller = Controller(
        host,
        source,
        clock,
        StateStore(args.state_dir),
        ControllerOptions(
            resync_interval=args.resync_interval,
            progress_interval=args.progress_interval,
            abort_on_shutdown=args.abort_on_shutdown,
        ),
        Notifier(),
        holds=HoldStore(args.state_dir),
        coordinator=coordinator,
    )
    renderer = MetricsRenderer(__version__)
    server = WebServer(
        args.listen_address,
        web_config,
        lambda: renderer.render(controller.snapshot),
        lambda: render_landing_page(__version__, controller.snapshot),
        config_file=Path(args.web_config_file) if args.web_config_file else None,
    )
    try:
        server.start()
    except OSError as error:
        print(
            f"blockpull-exporter: cannot listen on {args.listen_address}: {error}", file=sys.stderr
        )
        host.close()
        if coordinator is not None:
            coordinator.close()
        return 1

    def reload(*_: object) -> None:  # only wake-ups here: the loops do the loading
        controller.inbox.put(Reload())
        server.reload_config()

    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, lambda *_: controller.inbox.put(Shutdown()))
    signal.signal(signal.SIGINT, lambda *_: controller.inbox.put(Shutdown()))
    log.info(
        "blockpull-exporter %s: policy %s, host %s, metrics on %s",
        __version__,
        args.policy_file,
        args.libvirt_uri,
        args.listen_address,
    )
    try:
        controller.run()
    finally:
        server.stop()
        if coordinator is not None:
            coordinator.close()
    log.info("stopped")
    return 0
