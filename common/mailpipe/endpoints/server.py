"""A small, bounded HTTP endpoint for Prometheus scrapes and health probes.

Why not `prometheus_client.start_http_server`: it binds every address, answers
the registry on any path, and runs one thread per connection (300 idle
connections held 313 threads), which under `hostNetwork` puts an unbounded
server on the node's addresses. This one runs in the caller's asyncio loop
(a coroutine per connection, no threads), answers exactly the paths it is
given, holds at most `max_connections`, and gives each client
`REQUEST_HEAD_TIMEOUT_SECONDS` to send a request head of at most
`MAX_REQUEST_HEAD_BYTES`. When full, a new connection evicts the oldest one
that has not yet sent its request (so idle clients cannot lock a scraper
out), or is closed at once if every slot is busy answering. Responses are
`Connection: close`: a scraper opens a connection per scrape anyway.

It speaks only the part of HTTP/1.x a scraper and the kubelet's probes use
(GET/HEAD of a fixed path); the registry is rendered on the loop thread, so
collectors that read engine state see it between two steps of the engine,
never in the middle of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("mailpipe.endpoints")

REQUEST_HEAD_TIMEOUT_SECONDS = 5.0  # a scraper sends its request at once; slowloris does not
MAX_REQUEST_HEAD_BYTES = 8192  # a GET line and a few headers; anything bigger is not a scrape
DEFAULT_MAX_CONNECTIONS = 16  # Prometheus HA pairs, probes and a human with curl, with room
METRICS_PATH = "/metrics"

Probe = Callable[[], tuple[bool, str]]
"""A health check: (healthy, one-line reason)."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    content_type: str
    body: bytes


def _text(status: int, reason: str, body: str) -> Response:
    return Response(status, reason, "text/plain; charset=utf-8", (body + "\n").encode())


class ScrapeEndpoint:
    """`GET /metrics` from a registry, plus named probes (e.g. /healthz, /readyz)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        probes: dict[str, Probe] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.registry, self.host, self.port = registry, host, port
        self.probes = dict(probes or {})
        self.max_connections = max_connections
        self.active = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        # Connections still sending their request head, oldest first (dicts keep order).
        self._waiting: dict[asyncio.StreamWriter, None] = {}

    @property
    def bound_port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> ScrapeEndpoint:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_REQUEST_HEAD_BYTES
        )
        log.info("serving %s on %s:%d", self.paths(), self.host, self.bound_port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def paths(self) -> list[str]:
        return [METRICS_PATH, *self.probes]

    def respond(self, method: str, target: str) -> Response:
        """The answer to one request line; pure, so the routing table is unit-tested."""
        path = target.split("?", 1)[0]
        if path != METRICS_PATH and path not in self.probes:
            return _text(404, "Not Found", f"not found; this endpoint serves {self.paths()}")
        if method not in ("GET", "HEAD"):
            return _text(405, "Method Not Allowed", "only GET and HEAD")
        if path == METRICS_PATH:
            return Response(200, "OK", CONTENT_TYPE_LATEST, generate_latest(self.registry))
        healthy, why = self.probes[path]()
        return _text(200, "OK", why) if healthy else _text(503, "Service Unavailable", why)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            if not self._waiting:
                self.refused += 1
                writer.close()
                return
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.close()  # its reader sees EOF; its coroutine ends and frees the slot
            self.refused += 1
        self.active += 1
        self._waiting[writer] = None
        try:
            try:
                response, head_only = await self._answer(reader)
            finally:
                self._waiting.pop(writer, None)
            writer.write(
                (
                    f"HTTP/1.1 {response.status} {response.reason}\r\n"
                    f"Content-Type: {response.content_type}\r\n"
                    f"Content-Length: {len(response.body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode("latin-1")
                + (b"" if head_only else response.body)
            )
            await asyncio.wait_for(writer.drain(), REQUEST_HEAD_TIMEOUT_SECONDS)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a client that stalls or goes away gets nothing more
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Response, bool]:
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), REQUEST_HEAD_TIMEOUT_SECONDS
            )
        except asyncio.LimitOverrunError:
            return _text(431, "Request Header Fields Too Large", "request head too large"), False
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(400, "Bad Request", "expected 'METHOD /path HTTP/1.x'"), False
        method, target = parts[0], parts[1]
        return self.respond(method, target), method == "HEAD"
