"""Operator benchmarks on the local stack: fan-out rate, 200 pools to Ready, peak RSS.

- fan-out: a 100,000-recipient campaign (audience gzipped in a ConfigMap's
  binaryData, as a ConfigMap holds at most 1 MiB) against a Ready pool; rate
  from the fan-out's start to `state: done`, counting records on the topic;
- reconcile at scale: 200 SendingPools applied in one `kubectl apply`, time
  until every one reports Ready=True (each creates 4 children and 4 topics);
- the operator's peak RSS over both.

Writes bench/results/operator.json. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mailpipe.devstack import harness
from mailpipe.devstack.harness import Env, apply, kubectl_ok
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.stack import Stack

from .common import PeakRSS, write_result

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
DEFAULT_RECIPIENTS = 100_000
DEFAULT_POOLS = 200
FANOUT_PARTITIONS = 4
POOL_READY_TIMEOUT_SECONDS = 120
FANOUT_TIMEOUT_SECONDS = 900
POOLS_READY_TIMEOUT_SECONDS = 900
FANOUT_POLL_SECONDS = 0.2  # the fan-out rate is measured against this
POOLS_POLL_SECONDS = 1  # listing 200 pools is itself work for the operator's apiserver
OPERATOR_STOP_GRACE_SECONDS = 60
AUDIENCE_DOMAINS = 20


def pool(name: str, namespace: str, bootstrap: str, partitions: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            # no relays: Ready needs available relays, and the dev stack runs no
            # kubelet; with replicas 0 a pool is Ready once reconciled (0/0)
            "replicas": 0,
            "kafka": {
                "bootstrapServers": bootstrap,
                "partitions": partitions,
                "delaySteps": ["1m"],
            },
            "egressIPs": [{"address": "127.0.0.2", "helo": "bench.src.test"}],
        },
    }


def ready_names(env: Env, namespace: str) -> set[str]:
    items = harness.get_json(env, "sp", "-n", namespace)["items"]
    return {i["metadata"]["name"] for i in items if harness.condition_true(i)}


def fanout(
    env: Env, namespace: str, bootstrap: str, recipients: int, operator: harness.Child
) -> float:
    apply(env, pool("fanout", namespace, bootstrap, partitions=FANOUT_PARTITIONS))
    harness.wait_for(
        lambda: "fanout" in ready_names(env, namespace),
        POOL_READY_TIMEOUT_SECONDS,
        "the fan-out pool to be Ready",
        watch=[operator],
    )
    csv = "address,first\n" + "".join(
        f"u{i}@d{i % AUDIENCE_DOMAINS}.test,U{i}\n" for i in range(recipients)
    )
    blob = base64.b64encode(gzip.compress(csv.encode())).decode()
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "audience", "namespace": namespace},
        "binaryData": {"audience.csv.gz": blob},
    }
    # create, not apply: apply would copy 1 MB into an annotation
    kubectl_ok(env, "create", "-f", "-", stdin=json.dumps(cm))
    camp = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": "big", "namespace": namespace},
        "spec": {
            "poolRef": "fanout",
            "from": {"address": "news@src.test"},
            "subject": "Hello {{ first }}",
            "text": "Hi {{ first }}",
            "audience": {"configMapRef": {"name": "audience", "key": "audience.csv.gz"}},
        },
    }
    apply(env, camp)
    started: float | None = None
    state: dict[str, Any] = {}

    def done() -> bool:
        nonlocal started, state
        status = harness.get_json(env, "camp", "big", "-n", namespace).get("status", {})
        state = status.get("fanout", {})
        if started is None and state.get("state") == "running":
            started = time.monotonic()
        if state.get("state") == "failed":
            raise RuntimeError(state)
        return state.get("state") == "done"

    harness.wait_for(
        done,
        FANOUT_TIMEOUT_SECONDS,
        "the fan-out to finish",
        watch=[operator],
        interval_seconds=FANOUT_POLL_SECONDS,
    )
    assert state["enqueued"] == recipients, state
    begin = started or time.monotonic()
    return recipients / max(time.monotonic() - begin, 1e-3)


def pools_ready(
    env: Env, namespace: str, bootstrap: str, count: int, operator: harness.Child
) -> float:
    items = [pool(f"p{i:03d}", namespace, bootstrap) for i in range(count)]
    started = time.monotonic()
    apply(env, {"apiVersion": "v1", "kind": "List", "items": items})
    harness.wait_for(
        lambda: len({n for n in ready_names(env, namespace) if n.startswith("p")}) == count,
        POOLS_READY_TIMEOUT_SECONDS,
        f"{count} pools to be Ready",
        watch=[operator],
        interval_seconds=POOLS_POLL_SECONDS,
    )
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the stack and servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=DEFAULT_RECIPIENTS)
    parser.add_argument("--pools", type=int, default=DEFAULT_POOLS)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-bench-op-"))
    stack = Stack(workdir / "stack")
    state = stack.up()
    env = {**os.environ, **state.env()}
    operator = None
    try:
        harness.apply_crds(env, ROOT / "crds")
        kubectl_ok(env, "create", "namespace", NAMESPACE)
        operator = harness.start_mailpipe(
            "operator",
            ["operator", "--liveness-port", str(free_port())],
            workdir / "operator.log",
            env,
        )
        rss = PeakRSS(operator.pid)
        rate = fanout(env, NAMESPACE, state.kafka_bootstrap, args.recipients, operator)
        print(f"fan-out: {rate:.0f} records/s for {args.recipients} recipients")
        seconds = pools_ready(env, NAMESPACE, state.kafka_bootstrap, args.pools, operator)
        print(f"{args.pools} pools Ready in {seconds:.1f}s")
        peak = rss.stop()
    finally:
        if operator is not None:
            operator.stop(OPERATOR_STOP_GRACE_SECONDS)
        stack.down()
    write_result(
        "operator",
        {
            "recipients": args.recipients,
            "pools": args.pools,
            "fanout_records_per_s": round(rate, 1),
            "pools_ready_seconds": round(seconds, 1),
            "operator_peak_rss_mb": round(peak, 1),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
