"""Operator benchmarks on the local stack: fan-out rate, 200 and 1,000 pools to Ready.

- fan-out: a 100,000-recipient campaign (audience gzipped in a ConfigMap's
  binaryData, as a ConfigMap holds at most 1 MiB) against a Ready pool; rate
  from the fan-out's start to `state: done`, counting records on the topic
  (`--recipients 0` skips it);
- reconcile at scale: for each `--pools` count (default 200, then 1,000 more
  in a namespace of their own, so the operator then holds 1,200), the pools
  applied by four `kubectl apply` at once (50 pools each) once the operator
  has made a first pool Ready, time until every one reports Ready=True
  (each creates 4 children and its topics), the operator's CPU seconds over
  that time and its peak RSS;
- the operator's time to exit on SIGTERM at the end, and the number of
  kafka-python "blocking the event loop" warnings in its log.

Writes bench/results/operator.json. Loopback only. A signal (Ctrl-C, SIGTERM)
stops the run and every process it started (`harness.stop_on_signal`).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import gzip
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from mailpipe.devstack import harness
from mailpipe.devstack.harness import Env, apply, kubectl_ok
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.stack import Stack

from .common import PeakRSS, cpu_seconds, write_result

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
DEFAULT_RECIPIENTS = 100_000
DEFAULT_POOLS = [200, 1000]
FANOUT_PARTITIONS = 4
POOL_READY_TIMEOUT_SECONDS = 120
FANOUT_TIMEOUT_SECONDS = 900
POOLS_READY_TIMEOUT_SECONDS = 900
FANOUT_POLL_SECONDS = 0.2  # the fan-out rate is measured against this
POOLS_POLL_SECONDS = 2  # listing 1,000 pools is itself work for the operator's apiserver
OPERATOR_STOP_GRACE_SECONDS = 60
OPERATOR_START_TIMEOUT_SECONDS = 120  # imports and the first API lists on a loaded machine
HTTP_OK = 200
APPLY_CHUNK = 50  # pools per kubectl apply
APPLY_PROCESSES = 4  # kubectl applies at once
AUDIENCE_DOMAINS = 20
BLOCKING_WARNING = "blocking the event loop"  # kafka-python's I/O loop starved of CPU


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


def operator_alive(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == HTTP_OK)
    except OSError:
        return False


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
) -> dict[str, float]:
    """Apply `count` pools in `namespace` at once; seconds until all are Ready,
    and the operator's CPU seconds and peak RSS meanwhile."""
    kubectl_ok(env, "create", "namespace", namespace)
    items = [pool(f"p{i:04d}", namespace, bootstrap) for i in range(count)]
    cpu_before = cpu_seconds(operator.pid) or 0.0
    rss = PeakRSS(operator.pid)
    started = time.monotonic()
    # In a few kubectl processes at once, as a GitOps sync would: one kubectl
    # creates its objects one request after another, and the benchmark would
    # measure that instead of the operator.
    chunks = [items[i : i + APPLY_CHUNK] for i in range(0, len(items), APPLY_CHUNK)]
    with concurrent.futures.ThreadPoolExecutor(APPLY_PROCESSES) as pool_:
        list(
            pool_.map(
                lambda chunk: apply(env, {"apiVersion": "v1", "kind": "List", "items": chunk}),
                chunks,
            )
        )
    applied = time.monotonic() - started
    harness.wait_for(
        lambda: len(ready_names(env, namespace)) == count,
        POOLS_READY_TIMEOUT_SECONDS,
        f"{count} pools to be Ready",
        watch=[operator],
        interval_seconds=POOLS_POLL_SECONDS,
    )
    seconds = time.monotonic() - started
    peak = rss.stop()
    cpu = (cpu_seconds(operator.pid) or 0.0) - cpu_before
    return {
        "pools": count,
        "apply_seconds": round(applied, 1),
        "ready_seconds": round(seconds, 1),
        "operator_cpu_seconds": round(cpu, 1),
        "operator_cpu_cores": round(cpu / seconds, 2),
        "operator_peak_rss_mb": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=DEFAULT_RECIPIENTS, help="0: no fan-out")
    parser.add_argument("--pools", type=int, nargs="+", default=DEFAULT_POOLS)
    args = parser.parse_args(argv)
    with harness.stop_on_signal():
        result = run(args.recipients, args.pools)
    write_result("operator", result)
    return 0


def run(recipients: int, pool_counts: list[int]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-bench-op-"))
    print(f"logs in {workdir}", flush=True)
    stack = Stack(workdir / "stack")
    operator = None
    result: dict[str, Any] = {"recipients": recipients}
    try:
        state = stack.up()
        env = {**os.environ, **state.env()}
        harness.apply_crds(env, ROOT / "crds")
        kubectl_ok(env, "create", "namespace", NAMESPACE)
        liveness = free_port()
        operator = harness.start_mailpipe(
            "operator",
            ["operator", "--liveness-port", str(liveness)],
            workdir / "operator.log",
            env,
        )
        # The clock starts with the operator up and watching (one pool Ready):
        # its start-up is not reconcile time.
        harness.wait_for(
            lambda: operator_alive(liveness),
            OPERATOR_START_TIMEOUT_SECONDS,
            "the operator's /healthz",
            watch=[operator],
        )
        apply(env, pool("probe", NAMESPACE, state.kafka_bootstrap))
        harness.wait_for(
            lambda: "probe" in ready_names(env, NAMESPACE),
            OPERATOR_START_TIMEOUT_SECONDS,
            "a first pool to be Ready",
            watch=[operator],
        )
        rss = PeakRSS(operator.pid)
        if recipients:
            rate = fanout(env, NAMESPACE, state.kafka_bootstrap, recipients, operator)
            print(f"fan-out: {rate:.0f} records/s for {recipients} recipients", flush=True)
            result["fanout_records_per_s"] = round(rate, 1)
        phases = []
        for count in pool_counts:
            phase = pools_ready(env, f"{NAMESPACE}-{count}", state.kafka_bootstrap, count, operator)
            print(
                f"{count} pools Ready in {phase['ready_seconds']}s "
                f"(operator {phase['operator_cpu_seconds']} CPU-s, "
                f"peak RSS {phase['operator_peak_rss_mb']} MB)",
                flush=True,
            )
            phases.append(phase)
        result["scale"] = phases
        result["operator_peak_rss_mb"] = round(rss.stop(), 1)
        result["operator_cpu_seconds"] = round(rss.cpu_s, 1)
        stopping = time.monotonic()
        operator.stop(OPERATOR_STOP_GRACE_SECONDS)
        result["operator_stop_seconds"] = round(time.monotonic() - stopping, 1)
        result["operator_stop_status"] = operator.returncode
        log = (workdir / "operator.log").read_text(errors="replace")
        result["blocking_warnings"] = log.count(BLOCKING_WARNING)
    finally:
        if operator is not None:
            operator.stop(OPERATOR_STOP_GRACE_SECONDS)
        stack.down()
    return result


if __name__ == "__main__":
    sys.exit(main())
