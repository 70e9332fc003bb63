"""The README's "Using it" section, run line by line against the dev stack.

Each shell line of the section's ```sh blocks runs as written, in bash, from the
repository root, and must exit 0; then the pool must be Ready and the
campaign's audience on Kafka. A README edit that breaks a line fails here.

What differs from a real cluster, and only that (the substitution):

- `KUBECONFIG` and `KAFKA_BOOTSTRAP` point at the dev stack, as the README asks
  the reader to set them (`mailpipe dev env` prints both); the cached helm is
  put on PATH.
- There is no kubelet. After the `helm install` line the test does what the
  kubelet would do with the chart's operator Deployment: it runs that
  container's command (`mailpipe` + the Deployment's args and env) as a local
  process, authenticated as the chart's ServiceAccount (a token kubeconfig,
  as in a pod), with free local ports for its health and metrics endpoints.
  It also plays the kubelet and Deployment controller for the relay
  Deployments the operator writes: it reports them available, as those
  controllers would once the relay pods ran (`Kubelet.report_relays`).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailpipe.devstack import harness, paths
from mailpipe.devstack.stack import StackState
from tests.conftest import wait_for
from tests.helm.kubelet import Kubelet

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Using it"
LINE_TIMEOUT_SECONDS = 180  # the longest line is `kubectl wait --timeout=120s`
FANOUT_SECONDS = 60  # two recipients checked and produced: seconds on an idle stack
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def section_lines(text: str, heading: str = SECTION) -> list[str]:
    """The shell lines of the section's ```sh blocks: comments and blank lines left
    out, `\\`-continued lines joined."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    body = text[start : end if end >= 0 else len(text)]
    lines: list[str] = []
    for block in SHELL_BLOCK.findall(body):
        pending = ""
        for raw in block.splitlines():
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1].rstrip() + " "
                continue
            pending = ""
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_the_section_holds_the_quick_start() -> None:
    """The e2e test below runs what this finds: an empty or renamed section would pass it."""
    lines = section_lines(README.read_text())
    assert [line.split()[:2] for line in lines][:5] == [
        ["kubectl", "create"],
        ["helm", "install"],
        ["kubectl", "apply"],
        ["kubectl", "wait"],
        ["kubectl", "apply"],
    ], lines
    assert any(line.startswith("kubectl get sendingpools,campaigns") for line in lines)


def test_section_lines_join_continuations_and_drop_comments() -> None:
    text = "## Using it\n```sh\n# note\na \\\n  b  # c\n\nd\n```\n## Next\n```sh\ne\n```\n"
    assert section_lines(text) == ["a b  # c", "d"]


@pytest.fixture
def reader_env(stack_state: StackState) -> dict[str, str]:
    """The reader's shell: KUBECONFIG and KAFKA_BOOTSTRAP set, helm on PATH."""
    path = f"{paths.binary('helm').parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **stack_state.env(), "PATH": path}


@pytest.fixture
def kubelet(
    reader_env: dict[str, str], stack_state: StackState, tmp_path: Path
) -> Iterator[Kubelet]:
    k = Kubelet(reader_env, Path(stack_state.kubeconfig), tmp_path)
    try:
        yield k
    finally:
        # The README's objects go while the operator still runs (it owns their finalizers).
        for kind in ("campaigns", "sendingpools"):
            harness.kubectl(reader_env, "delete", kind, "--all", "-n", "mail", "--wait=true")
        k.stop()
        # the CRs are gone already (what the pre-delete hook does; its Job needs a kubelet)
        harness.helm(reader_env, "uninstall", "mailpipe", "-n", "mailpipe-system", "--no-hooks")
        harness.kubectl(reader_env, "delete", "namespace", "mail", "--wait=false")


def run_line(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=LINE_TIMEOUT_SECONDS,
    )


def campaign(env: dict[str, str]) -> dict[str, Any]:
    return harness.get_object(env, "camp", "november-newsletter", "mail") or {}


@pytest.mark.e2e
def test_using_it_runs_as_written(reader_env: dict[str, str], kubelet: Kubelet) -> None:
    lines = section_lines(README.read_text())
    operator: harness.Child | None = None
    for line in lines:
        out = run_line(line, reader_env)
        log = "" if operator is None else operator.log_section()
        assert out.returncode == 0, f"README line failed: {line}\n{out.stdout}{out.stderr}{log}"
        install = re.match(r"helm install (\S+) .*-n (\S+)", line)
        if install:  # the kubelet substitution: the chart's operator Deployment runs
            operator = kubelet.run_operator(install[1], install[2])
            kubelet.report_relays()
    assert operator is not None, "the section installs no chart"

    pool = harness.get_object(reader_env, "sp", "marketing", "mail")
    assert harness.condition_true(pool), pool
    audience = 2  # examples/newsletter-campaign.yaml's ConfigMap

    def fanned_out() -> bool:
        fanout = campaign(reader_env).get("status", {}).get("fanout", {})
        return fanout.get("state") == "done" and fanout.get("enqueued") == audience

    wait_for(fanned_out, FANOUT_SECONDS, "the campaign's audience on Kafka", operator)
    wait_for(
        lambda: campaign(reader_env).get("status", {}).get("phase") in ("Scheduled", "Sending"),
        FANOUT_SECONDS,
        "the campaign Scheduled or Sending",
        operator,
    )
    # The operator's own metrics saw the same.
    metrics = kubelet.metrics()
    assert sample(metrics, "mailpipe_operator_pool_ready", namespace="mail", pool="marketing") == 1
    enqueued = sample(
        metrics,
        "mailpipe_operator_fanout_enqueued_records",
        namespace="mail",
        pool="marketing",
        campaign="november-newsletter",
    )
    assert enqueued == audience, metrics
    reconciled = sample(
        metrics,
        "mailpipe_operator_reconciles_total",
        kind="SendingPool",
        namespace="mail",
        handler="reconcile_pool",
        outcome="succeeded",
    )
    assert reconciled is not None and reconciled >= 1, metrics


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the series `name{labels}` in a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None
