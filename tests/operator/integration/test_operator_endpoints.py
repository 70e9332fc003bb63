"""The operator's endpoints as a hostile client finds them (issue 11,
"Exposed endpoints ... the operator's health endpoint likewise"): bound to the
address given, one path each, other paths 404."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mailpipe.devstack.harness import Children
from mailpipe.devstack.procs import free_port
from tests.conftest import wait_for

pytestmark = [pytest.mark.operator, pytest.mark.security]

LISTEN = "127.0.0.7"  # stands in for the pod IP; 127.0.0.1 for every other address


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{LISTEN}:{port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def test_health_and_metrics_bind_the_listen_address_and_answer_one_path(
    crds: None, cli_env: dict[str, str], namespace: str, tmp_path: Path
) -> None:
    health, metrics = free_port(LISTEN), free_port(LISTEN)
    args = ["operator", "--namespace", namespace, f"--liveness-port={health}"]
    args += [f"--metrics-port={metrics}", f"--listen-address={LISTEN}"]
    with Children(tmp_path) as children:
        op = children.mailpipe("operator", args, cli_env)
        wait_for(lambda: get(health, "/healthz") == 200, 60, "/healthz", op)
        wait_for(lambda: get(metrics, "/metrics") == 200, 30, "/metrics", op)
        for port in (health, metrics):
            with pytest.raises(OSError):  # nothing on the other addresses
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert get(health, "/metrics") == 404
        assert get(health, "/") == 404
        assert get(metrics, "/healthz") == 404
        assert get(metrics, "/admin") == 404
