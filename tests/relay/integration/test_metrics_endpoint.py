"""A relay's metrics endpoint as a hostile client finds it (issue 11,
"Exposed endpoints"): bound only to the address it is given, one path, no
thread per connection, and recipient domains that cannot grow its series."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from mailpipe.devstack.procs import free_port
from tests.relay.integration.conftest import Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]

METRICS_HOST = "127.0.0.5"  # stands in for the pod IP; 127.0.0.1 stands in for every other
IDLE_CLIENTS = 300
DOMAIN_LABELS = 5
RANDOM_DOMAINS = 40
THREAD_SLACK = 3  # the relay's own threads may come and go a little (executor, Kafka)


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def scrape(path: str, port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{METRICS_HOST}:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:  # not listening (yet)
        return 0, ""


def test_the_metrics_endpoint_is_bound_bounded_and_answers_one_path(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
) -> None:
    port = free_port(METRICS_HOST)
    pool = pool_factory(
        metrics_port=port,
        metrics_address=METRICS_HOST,
        metrics_domain_labels=DOMAIN_LABELS,
        routes={f"r{i}.test": [{"host": "127.0.0.10", "port": 9}] for i in range(RANDOM_DOMAINS)},
    )
    relay = relays(pool)
    wait_for(lambda: scrape("/metrics", port)[0] == 200, 60, "metrics endpoint", relay)
    # The endpoint answers before the Kafka clients start their threads: count
    # threads only once the relay has started consuming.
    wait_for(lambda: "relay started" in relay.log.read_text(), 60, "relay started", relay)

    with pytest.raises(OSError):  # not on every address: only the one it was given
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert scrape("/", port)[0] == 404
    assert scrape("/anything/else", port)[0] == 404

    before = threads(relay.pid)
    idle = [socket.create_connection((METRICS_HOST, port)) for _ in range(IDLE_CLIENTS)]
    try:
        assert threads(relay.pid) <= before + THREAD_SLACK
        assert scrape("/metrics", port)[0] == 200  # idle clients do not lock a scraper out
    finally:
        for s in idle:
            s.close()

    for i in range(RANDOM_DOMAINS):  # each gets a deferral: a series per domain, unbounded before
        pool.send(f"u@r{i}.test")
    pool.flush()
    wait_for(
        lambda: (
            len([e for e in pool.events() if e.get("domain", "").startswith("r")]) >= RANDOM_DOMAINS
        ),
        90,
        "a disposition for every random domain",
        relay,
    )
    body = scrape("/metrics", port)[1]
    domains = {
        line.split('domain="', 1)[1].split('"', 1)[0]
        for line in body.splitlines()
        if line.startswith("mailpipe_deliveries_total{") and 'domain="' in line
    }
    assert len(domains) <= DOMAIN_LABELS + 1, domains
    assert "other" in domains
