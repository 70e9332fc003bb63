"""`helm test` proves the operator answers: the command its test pod runs, run by hand.

There is no kubelet on the dev stack, so `helm test` cannot start its pod. This
test renders the chart's test hooks, creates the pod's ServiceAccount, Role and
RoleBinding as `helm test` would, and runs the pod's exact command (`python -c
<files/helm-test.py>`, the pod's env) as that ServiceAccount, against the
chart's operator run as a local process (`kubelet.Kubelet`). With the operator
stopped, the same command must fail: it cannot pass without an operator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.devstack import harness
from mailpipe.devstack.stack import StackState
from tests.helm.kubelet import Kubelet

pytestmark = pytest.mark.operator

CHART = Path(__file__).resolve().parents[2] / "helm" / "mailpipe"
TEST_HOOKS = "templates/tests/test-operator.yaml"
COMMAND_TIMEOUT_SECONDS = 120  # the script's own wait is 60 s, plus start-up
NO_OPERATOR_WAIT_SECONDS = "5"  # how long the script waits when nobody answers


@pytest.fixture
def release(
    cli_env: dict[str, str], stack_state: StackState, namespace: str, unique: str, tmp_path: Path
) -> Iterator[tuple[str, Kubelet, list[str]]]:
    """The chart installed watching the test's namespace; its operator not yet running."""
    name = f"ht{unique}"
    values = ["--set", f"operator.watchNamespaces={{{namespace}}}"]
    harness.helm_ok(cli_env, "install", name, str(CHART), "-n", namespace, *values)
    kubelet = Kubelet(cli_env, Path(stack_state.kubeconfig), tmp_path)
    try:
        yield name, kubelet, values
    finally:
        kubelet.children.stop_all()
        harness.helm(
            cli_env, "uninstall", name, "-n", namespace, "--no-hooks"
        )  # hook Job: no kubelet


def create_test_hooks(cli_env: dict[str, str], name: str, namespace: str, values: list[str]) -> Any:
    """Create what `helm test` creates before its pod; return the pod."""
    rendered = harness.helm_ok(
        None, "template", name, str(CHART), "-n", namespace, *values, "--show-only", TEST_HOOKS
    )
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc["kind"] != "Pod":
            harness.apply(cli_env, json.dumps(doc))
    return next(d for d in docs if d["kind"] == "Pod")


def run_pod_command(
    kubelet: Kubelet, pod: dict[str, Any], namespace: str, **env: str
) -> subprocess.CompletedProcess[str]:
    container = pod["spec"]["containers"][0]
    assert container["command"][0] == "python"
    kubeconfig = kubelet.token_kubeconfig(pod["spec"]["serviceAccountName"], namespace)
    pod_env = {v["name"]: v["value"] for v in container["env"]}
    return subprocess.run(
        [sys.executable, *container["command"][1:], *container["args"]],
        env={**os.environ, **pod_env, **env, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )


def test_the_helm_test_command_passes_only_when_the_operator_answers(
    cli_env: dict[str, str], namespace: str, release: tuple[str, Kubelet, list[str]]
) -> None:
    name, kubelet, values = release
    pod = create_test_hooks(cli_env, name, namespace, values)

    nobody = run_pod_command(
        kubelet, pod, namespace, MAILPIPE_TEST_TIMEOUT_SECONDS=NO_OPERATOR_WAIT_SECONDS
    )
    assert nobody.returncode != 0, nobody.stdout
    assert "did not answer" in nobody.stderr, nobody.stderr

    operator = kubelet.run_operator(name, namespace)
    answered = run_pod_command(kubelet, pod, namespace)
    assert answered.returncode == 0, answered.stdout + answered.stderr + operator.log_section()
    assert "operator answered: fan-out waitingForPool" in answered.stdout, answered.stdout
    assert "released the campaign" in answered.stdout
