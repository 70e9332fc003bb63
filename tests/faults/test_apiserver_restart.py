"""Fault: the Kubernetes apiserver restarts in the middle of a Campaign's fan-out.

The operator loses its watches and cannot patch the checkpoint while the
apiserver is away. It must carry on by itself once the apiserver is back (no
operator restart) and the fan-out must still be exactly once: every audience
member produced to the pool's outbound topic once, none twice (ARCHITECTURE.md, "Fan-out exactly
once").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.devstack.harness import Child, kubectl
from mailpipe.devstack.harness import get_object as get
from mailpipe.devstack.stack import Stack
from tests.conftest import wait_for
from tests.operator.integration.conftest import ready_pool
from tests.operator.integration.test_operator import GOOD_CAMPAIGN, _outbound_ids, _with

pytestmark = [pytest.mark.faults, pytest.mark.operator]

AUDIENCE = 3_000
CHUNK = "250"  # records per checkpoint: the restart falls between checkpoints
# The apiserver stays away until watches and patches have failed (kopf's log), not
# for a fixed time: a guess at how fast the operator notices.
OUTAGE_LIMIT_SECONDS = 120
WATCH_RETRIED = "Request attempt #2/"  # kopf: a watch failed twice
WATCH_RETRIED_LONG = "Request attempt #4/"  # kopf's back-off: about 7 s of failing watches
DAEMON_FAILED = ("failed with an exception", "failed temporarily")  # kopf, on the fan-out


def test_apiserver_restart_during_fanout_resumes_exactly_once(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    broken_stack: Stack,
) -> None:
    op = operator_factory(MAILPIPE_FANOUT_CHUNK=CHUNK)
    ready_pool(cli_env, namespace, kafka_bootstrap, topic_prefix, op)
    csv = "address,first\n" + "".join(f"u{i}@d{i % 13}.test,U{i}\n" for i in range(AUDIENCE))
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "aud", "namespace": namespace},
        "data": {"audience.csv": csv},
    }
    assert kubectl(cli_env, "apply", "-f", "-", stdin=json.dumps(cm)).returncode == 0
    camp = _with(GOOD_CAMPAIGN, "audience", {"configMapRef": {"name": "aud"}})
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": "big", "namespace": namespace},
        "spec": camp,
    }
    assert kubectl(cli_env, "apply", "-f", "-", stdin=json.dumps(body)).returncode == 0

    def fanout() -> dict[str, Any]:
        status: dict[str, Any] = (get(cli_env, "camp", "big", namespace) or {}).get("status", {})
        return dict(status.get("fanout", {}))

    wait_for(lambda: fanout().get("nextIndex", 0) >= 500, 120, "fan-out under way", op)
    logged = op.log.stat().st_size
    broken_stack.stop_component("kube-apiserver")

    def outage_felt() -> bool:
        """The operator's watches failed and were retried, and its fan-out failed to
        reach the apiserver (or the watches kept failing for several seconds)."""
        since = op.log.read_text(errors="replace")[logged:]
        return WATCH_RETRIED in since and (
            any(words in since for words in DAEMON_FAILED) or WATCH_RETRIED_LONG in since
        )

    wait_for(outage_felt, OUTAGE_LIMIT_SECONDS, "the operator to feel the outage", op)
    broken_stack.start_component("kube-apiserver")
    assert op.alive(), op.log_tail()
    wait_for(lambda: fanout().get("state") == "done", 180, "fan-out done after the restart", op)

    uid = (get(cli_env, "camp", "big", namespace) or {})["metadata"]["uid"]
    ids = _outbound_ids(kafka_bootstrap, f"{topic_prefix}.outbound", uid)
    twice = [i for i, c in ids.items() if c > 1]
    print(f"apiserver restart: sent={AUDIENCE} produced={len(ids)} duplicated={len(twice)}")
    assert len(ids) == AUDIENCE, f"{AUDIENCE - len(ids)} audience members never produced"
    assert not twice, twice[:5]
    assert fanout()["enqueued"] == AUDIENCE
