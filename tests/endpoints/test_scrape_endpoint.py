"""The bounded metrics/health endpoint (issue 11, "Exposed endpoints"): one
path per purpose, no thread per connection, a cap on connections that idle
clients cannot use to lock a scraper out."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter

from mailpipe.endpoints import ScrapeEndpoint

pytestmark = pytest.mark.security

IDLE_CLIENTS = 300  # the probe in the issue: 300 idle connections held 313 threads


def registry() -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("probe_hits", "a counter to find in the scrape", registry=r).inc()
    return r


def endpoint(**kwargs: object) -> ScrapeEndpoint:
    return ScrapeEndpoint(
        registry(),
        "127.0.0.1",
        0,
        probes={"/healthz": lambda: (False, "consumer thread died")},
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/metrics", 200),
        ("GET", "/metrics?name[]=x", 200),
        ("HEAD", "/metrics", 200),
        ("GET", "/", 404),
        ("GET", "/metrics/", 404),
        ("GET", "/debug/pprof", 404),
        ("GET", "/../metrics", 404),
        ("POST", "/metrics", 405),
        ("GET", "/healthz", 503),
    ],
)
def test_only_the_named_paths_answer(method: str, target: str, status: int) -> None:
    assert endpoint().respond(method, target).status == status


def test_a_failing_probe_says_why() -> None:
    answer = endpoint().respond("GET", "/healthz")
    assert answer.body == b"consumer thread died\n"


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


async def test_idle_connections_take_no_threads_and_never_lock_out_a_scrape() -> None:
    ep = await endpoint(max_connections=8).start()
    threads_before = threading.active_count()
    idle = [await asyncio.open_connection("127.0.0.1", ep.bound_port) for _ in range(IDLE_CLIENTS)]
    await asyncio.sleep(0.2)
    assert threading.active_count() == threads_before
    assert ep.active <= 8
    status, body = await get(ep.bound_port, "/metrics")
    assert status == 200 and b"probe_hits_total 1.0" in body
    for _, w in idle:
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w in idle), return_exceptions=True)
    await ep.stop()


async def test_an_oversized_request_head_is_refused() -> None:
    ep = await endpoint().start()
    reader, writer = await asyncio.open_connection("127.0.0.1", ep.bound_port)
    writer.write(b"GET /metrics HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 20_000 + b"\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 431")
    writer.close()
    await writer.wait_closed()
    await ep.stop()
