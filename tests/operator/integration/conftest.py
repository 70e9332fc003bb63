"""Operator integration harness: CRDs on the real apiserver, the operator as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.devstack.procs import free_port

ROOT = Path(__file__).resolve().parents[3]
MAILPIPE = str(Path(sys.executable).parent / "mailpipe")


def kubectl(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="session")
def crds(cli_env: dict[str, str]) -> None:
    applied = kubectl(cli_env, "apply", "-f", str(ROOT / "crds"))
    assert applied.returncode == 0, applied.stderr
    est = kubectl(
        cli_env,
        "wait",
        "--for=condition=Established",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=mailpipe",
        "--timeout=30s",
    )
    assert est.returncode == 0, est.stderr


class OperatorProcess:
    def __init__(
        self, env: dict[str, str], log: Path, namespace: str, extra_env: dict[str, str]
    ) -> None:
        self.env = {**env, **extra_env}
        self.log = log
        self.namespace = namespace
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    MAILPIPE,
                    "operator",
                    "--namespace",
                    self.namespace,
                    "--liveness-port",
                    str(free_port()),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture
def operator_factory(
    crds: None, cli_env: dict[str, str], namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def make(**extra_env: str) -> OperatorProcess:
        op = OperatorProcess(cli_env, tmp_path / "operator.log", namespace, extra_env).start()
        started.append(op)
        return op

    yield make
    for op in started:
        op.stop()


def get(env: dict[str, str], kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    got = kubectl(env, "get", kind, name, "-n", namespace, "-o", "json")
    if got.returncode != 0:
        return None
    obj: dict[str, Any] = json.loads(got.stdout)
    return obj


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, op: OperatorProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{op.tail() if op else ''}")


def pool_manifest(name: str, namespace: str, bootstrap: str, prefix: str, **spec: Any) -> str:
    body: dict[str, Any] = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "kafka": {
                "bootstrapServers": bootstrap,
                "topicPrefix": prefix,
                "partitions": 3,
                "delaySteps": ["1s", "1m"],
            },
            "egressIPs": [{"address": "127.0.0.2", "helo": "egress-2.sender.test"}],
            **spec,
        },
    }
    return yaml.safe_dump(body)


@pytest.fixture
def env_for(cli_env: dict[str, str]) -> dict[str, str]:
    return dict(os.environ) | cli_env
