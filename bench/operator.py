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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mailpipe.devstack.procs import free_port
from mailpipe.devstack.stack import Stack

from .common import PeakRSS, write_result

ROOT = Path(__file__).resolve().parents[1]
MAILPIPE = str(Path(sys.executable).parent / "mailpipe")


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        ["kubectl", *args], input=stdin, env=env, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out.stdout


def pool(name: str, namespace: str, bootstrap: str, partitions: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "kafka": {
                "bootstrapServers": bootstrap,
                "partitions": partitions,
                "delaySteps": ["1m"],
            },
            "egressIPs": [{"address": "127.0.0.2", "helo": "bench.src.test"}],
        },
    }


def ready_names(env: dict[str, str], namespace: str) -> set[str]:
    items = json.loads(kubectl(env, "get", "sp", "-n", namespace, "-o", "json"))["items"]
    return {
        i["metadata"]["name"]
        for i in items
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in i.get("status", {}).get("conditions", [])
        )
    }


def fanout(env: dict[str, str], namespace: str, bootstrap: str, recipients: int) -> float:
    kubectl(
        env,
        "apply",
        "-f",
        "-",
        stdin=json.dumps(pool("fanout", namespace, bootstrap, partitions=4)),
    )
    deadline = time.monotonic() + 120
    while "fanout" not in ready_names(env, namespace):
        if time.monotonic() > deadline:
            raise TimeoutError("fan-out pool not Ready")
        time.sleep(0.5)
    csv = "address,first\n" + "".join(f"u{i}@d{i % 20}.test,U{i}\n" for i in range(recipients))
    blob = base64.b64encode(gzip.compress(csv.encode())).decode()
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "audience", "namespace": namespace},
        "binaryData": {"audience.csv.gz": blob},
    }
    kubectl(
        env, "create", "-f", "-", stdin=json.dumps(cm)
    )  # apply would copy 1 MB into an annotation
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
    kubectl(env, "apply", "-f", "-", stdin=json.dumps(camp))
    started = None
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = json.loads(kubectl(env, "get", "camp", "big", "-n", namespace, "-o", "json")).get(
            "status", {}
        )
        state = status.get("fanout", {})
        if started is None and state.get("state") == "running":
            started = time.monotonic()
        if state.get("state") == "done":
            assert state["enqueued"] == recipients, state
            begin = started or time.monotonic()
            return recipients / max(time.monotonic() - begin, 1e-3)
        if state.get("state") == "failed":
            raise RuntimeError(state)
        time.sleep(0.2)
    raise TimeoutError("fan-out did not finish")


def pools_ready(env: dict[str, str], namespace: str, bootstrap: str, count: int) -> float:
    items = [pool(f"p{i:03d}", namespace, bootstrap) for i in range(count)]
    started = time.monotonic()
    kubectl(
        env,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
    )
    deadline = started + 900
    while time.monotonic() < deadline:
        ready = {n for n in ready_names(env, namespace) if n.startswith("p")}
        if len(ready) == count:
            return time.monotonic() - started
        time.sleep(1)
    raise TimeoutError("pools not all Ready")


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the stack and servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--pools", type=int, default=200)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-bench-op-"))
    stack = Stack(workdir / "stack")
    state = stack.up()
    env = {**os.environ, **state.env()}
    operator = None
    try:
        kubectl(env, "apply", "-f", str(ROOT / "crds"))
        kubectl(
            env,
            "wait",
            "--for=condition=Established",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=mailpipe",
        )
        kubectl(env, "create", "namespace", "bench")
        with (workdir / "operator.log").open("wb") as log:
            operator = subprocess.Popen(
                [MAILPIPE, "operator", "--liveness-port", str(free_port())],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        rss = PeakRSS(operator.pid)
        rate = fanout(env, "bench", state.kafka_bootstrap, args.recipients)
        print(f"fan-out: {rate:.0f} records/s for {args.recipients} recipients")
        seconds = pools_ready(env, "bench", state.kafka_bootstrap, args.pools)
        print(f"{args.pools} pools Ready in {seconds:.1f}s")
        peak = rss.stop()
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=60)
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
