"""A SendingPool's deletion takes what the operator made, and touches nothing else.

Its topics go whatever its spec says now (an invalid time zone does not change
their names), and none comes back once gone; a pool whose Kafka the cluster
policy refuses is never contacted, neither while it lives nor when it goes.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kafka.admin import KafkaAdminClient

from .conftest import (
    OperatorProcess,
    get,
    kubectl,
    pool_manifest,
    wait_for,
    wait_pool_ready,
)

pytestmark = pytest.mark.operator

STATUS_SECONDS = 60  # a reconcile, on a loaded machine
DELETE_SECONDS = 60  # children, topics and the finalizer, on a loaded machine
# A topic deleted under a client that still follows it came back about 12 s
# later (broker auto-create); watching twice that long shows it stays gone.
STAYS_GONE_SECONDS = 25
POLL_SECONDS = 0.2


def _topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def _of_pool(bootstrap: str, prefix: str) -> set[str]:
    return {t for t in _topics(bootstrap) if t.startswith(prefix + ".")}


def _events(env: dict[str, str], namespace: str, name: str) -> list[tuple[str, str, str]]:
    out = kubectl(
        env,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "json",
    )
    return [(e["type"], e["reason"], e["message"]) for e in json.loads(out.stdout)["items"]]


def _ready(env: dict[str, str], namespace: str, name: str = "news") -> dict[str, str]:
    pool = get(env, "sp", name, namespace) or {}
    conditions = (pool.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _delete(env: dict[str, str], kind: str, name: str, namespace: str, op: OperatorProcess) -> None:
    deleted = kubectl(env, "delete", kind, name, "-n", namespace, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr
    wait_for(
        lambda: get(env, kind, name, namespace) is None,
        DELETE_SECONDS,
        f"{kind}/{name} gone; its events: {_events(env, namespace, name)}",
        op,
    )


def _campaign(name: str, namespace: str, pool: str) -> str:
    return json.dumps(
        {
            "apiVersion": "mailpipe.io/v1alpha1",
            "kind": "Campaign",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "poolRef": pool,
                "from": {"address": "news@sender.test"},
                "subject": "Hello",
                "text": "Hi",
                "audience": {"inline": [{"address": "a@x.test"}]},
            },
        }
    )


def _fanned_out(env: dict[str, str], name: str, namespace: str, op: OperatorProcess) -> None:
    assert kubectl(env, "apply", "-f", "-", stdin=_campaign(name, namespace, name)).returncode == 0

    def state() -> str:
        camp = get(env, "camp", name, namespace) or {}
        return str(camp.get("status", {}).get("fanout", {}).get("state"))

    wait_for(lambda: state() == "done", STATUS_SECONDS, f"campaign {name} fanned out", op)


def test_a_deleted_pools_topics_go_and_stay_gone(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
) -> None:
    """Every topic of the pool is deleted, and none is re-created afterwards by
    a client of the operator's that wrote to it (auto-create is on by default):
    the shared producer asks for the metadata of every topic it ever wrote to
    whenever it writes to a new one, here the next pool's fan-out."""
    op = operator_factory()
    for pool in ("news", "later"):
        prefix = f"mailpipe.{namespace}.{pool}"
        manifest = pool_manifest(pool, namespace, kafka_bootstrap, prefix)
        assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
        wait_pool_ready(cli_env, namespace, op, pool)
        if pool == "news":
            _fanned_out(cli_env, "news", namespace, op)  # the producer writes to its topics
            _delete(cli_env, "camp", "news", namespace, op)
            _delete(cli_env, "sp", "news", namespace, op)
            gone = f"mailpipe.{namespace}.news"
            assert _of_pool(kafka_bootstrap, gone) == set()
    _fanned_out(cli_env, "later", namespace, op)
    watch_until = time.monotonic() + STAYS_GONE_SECONDS
    while time.monotonic() < watch_until:
        back = _of_pool(kafka_bootstrap, gone)
        assert not back, f"re-created after the pool was deleted: {back}"
        time.sleep(POLL_SECONDS)


def test_a_pool_whose_spec_became_invalid_still_takes_its_topics(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    """The topic names come from the namespace, the name and the prefix, not from
    the warm-up time zone: a pool edited to an unknown zone still deletes them."""
    wait_for(
        lambda: f"{topic_prefix}.outbound" in _topics(kafka_bootstrap),
        STATUS_SECONDS,
        "the pool's topics",
        ready_operator,
    )
    patch = json.dumps({"spec": {"warmup": {"timeZone": "Mars/Olympus_Mons"}}})
    patched = kubectl(cli_env, "patch", "sp", "news", "-n", namespace, "--type=merge", "-p", patch)
    assert patched.returncode == 0, patched.stderr
    wait_for(
        lambda: _ready(cli_env, namespace).get("status") == "False",
        STATUS_SECONDS,
        "the pool refused for its time zone",
        ready_operator,
    )
    _delete(cli_env, "sp", "news", namespace, ready_operator)
    wait_for(
        lambda: not _of_pool(kafka_bootstrap, topic_prefix),
        STATUS_SECONDS,
        f"no topic {topic_prefix}.* left; events: {_events(cli_env, namespace, 'news')}",
        ready_operator,
    )


class _Listener:
    """A TCP port that counts who connects: where a refused Kafka would be."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(POLL_SECONDS)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def refused_kafka() -> Iterator[_Listener]:
    listener = _Listener()
    yield listener
    listener.close()


def test_a_pool_whose_kafka_the_policy_refuses_is_never_contacted(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    refused_kafka: _Listener,
    tmp_path: Path,
) -> None:
    """Refused, it is not followed, nor is its campaign's cancel sent there;
    deleted, it goes at once, saying the operator never connected there."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"allowedBootstrapServers": [kafka_bootstrap]}))
    op = operator_factory(MAILPIPE_POLICY=str(policy))
    manifest = pool_manifest("news", namespace, refused_kafka.address, topic_prefix)
    assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    campaign = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": "spring", "namespace": namespace},
        "spec": {
            "poolRef": "news",
            "from": {"address": "news@sender.test"},
            "subject": "Hello",
            "text": "Hi",
            "audience": {"inline": [{"address": "a@x.test"}]},
        },
    }
    assert kubectl(cli_env, "apply", "-f", "-", stdin=json.dumps(campaign)).returncode == 0
    wait_for(
        lambda: _ready(cli_env, namespace).get("reason") == "PolicyViolation",
        STATUS_SECONDS,
        "the pool refused by the policy",
        op,
    )
    wait_for(
        lambda: (
            (get(cli_env, "camp", "spring", namespace) or {}).get("status", {}).get("phase")
            == "Pending"
        ),
        STATUS_SECONDS,
        "the campaign's status timer ran",
        op,
    )
    # The campaign is told to nobody (its relays never ran), then the pool goes.
    _delete(cli_env, "camp", "spring", namespace, op)
    _delete(cli_env, "sp", "news", namespace, op)
    kept = [e for e in _events(cli_env, namespace, "news") if e[1] == "TopicsKept"]
    assert kept and "never connected" in kept[0][2], kept
    assert refused_kafka.connections == 0, op.log_tail()
