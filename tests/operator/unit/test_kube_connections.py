"""The operator's API client keeps a connection for each thread that calls the API
at once: with fewer, every answer beyond the pool's size dropped its connection
and the next call paid a new TLS session, on the operator and the API server
alike, while 1,000 pools were created."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.config import kube_config

from mailpipe.operator import handlers, kube_io

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_every_blocking_thread_keeps_its_api_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    api = kube_io.Kube().api
    assert api.configuration.host == "https://127.0.0.1:6443"
    pool_size = api.rest_client.pool_manager.connection_pool_kw["maxsize"]
    assert pool_size >= handlers.BLOCKING_CALL_THREADS
