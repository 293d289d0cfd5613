"""How much of the server any client, and all of them together, may hold."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WebLimits:
    # Served at once, each a thread and a file; Prometheus needs one or two. The rest wait in
    # the kernel's listen backlog, which holds no file of ours.
    max_connections: int = 64
    # Seconds a connection may wait for its request before it gives way to a newcomer when
    # every slot is taken: a scraper sends its request with its first packets.
    evictable_after: float = 0.1
    # Seconds for a whole request head and body once begun: a client trickling one byte a
    # second is cut off, however each read fares.
    request_timeout: float = 5.0
    # Seconds a keep-alive connection may idle between requests (Prometheus scrapes every
    # 15-60 s), and each write of a response may take.
    idle_timeout: float = 60.0
    handshake_timeout: float = 10.0  # seconds for the whole TLS handshake
    max_request_head: int = 32 * 1024  # bytes; a scrape's head is well under 1 KiB
    max_request_body: int = 64 * 1024  # bytes read and thrown away; GET and HEAD need none
