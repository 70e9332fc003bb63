"""The plugin on a pool that takes Kafka from the chart, as the README's pools do (issue 18, 1).

Before: every command on such a pool exited 2 with a pydantic dump saying
"kafka.bootstrapServers is not set and the operator has no default", which
was false, and `--bootstrap` / MAILPIPE_KAFKA_BOOTSTRAP changed nothing: the
spec was validated before the override was looked at. Now the plugin reads
the chart's value where the chart put it (the operator Deployment's
environment), an override wins, and every error is one line saying what to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from mailpipe.devstack import harness, kube
from mailpipe.devstack.harness import Child
from mailpipe.devstack.procs import free_port
from tests.operator.integration.conftest import pool_manifest, wait_pool_ready

from .conftest import one_line_error, plugin

pytestmark = pytest.mark.operator

CHART = Path(__file__).resolve().parents[2] / "helm" / "mailpipe"
TENANT_ROLE = """
apiVersion: v1
kind: ServiceAccount
metadata: {{name: tenant, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: tenant, namespace: {ns}}}
rules:
  - apiGroups: [mailpipe.io]
    resources: [sendingpools, campaigns]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tenant, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: tenant}}
subjects: [{{kind: ServiceAccount, name: tenant, namespace: {ns}}}]
"""


def chart_pool(namespace: str, bootstrap: str) -> str:
    """Pool "news" as the README's examples write it: no Kafka of its own."""
    doc = yaml.safe_load(pool_manifest("news", namespace, bootstrap, "unused"))
    del doc["spec"]["kafka"]["bootstrapServers"], doc["spec"]["kafka"]["topicPrefix"]
    return yaml.safe_dump(doc)


@pytest.fixture
def chart_operator(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    unique: str,
) -> Iterator[Child]:
    """The chart installed with kafka.bootstrapServers, and an operator running.

    What is checked is where the plugin finds Kafka (the operator Deployment's
    environment, as the chart renders it), not the operator's pod: the chart's
    Deployment has no replica and the operator runs as a process with the
    same bootstrap (pods on the node reach Kafka at an address the plugin,
    on the host, cannot)."""
    release = f"pk{unique}"
    harness.helm_ok(
        cli_env,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        f"operator.watchNamespaces={{{namespace}}}",
        "--set",
        f"kafka.bootstrapServers={kafka_bootstrap}",
        "--set",
        "operator.replicas=0",
    )
    try:
        yield operator_factory(MAILPIPE_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)  # the chart's env
    finally:
        # --no-hooks: the pre-delete Job runs a pod, and this test has no node
        harness.helm(cli_env, "uninstall", release, "-n", namespace, "--no-hooks")


def token_kubeconfig(
    env: dict[str, str], service_account: str, namespace: str, directory: Path
) -> Path:
    """A kubeconfig that authenticates as `namespace/service_account`."""
    token = harness.kubectl_ok(env, "create", "token", service_account, "-n", namespace).strip()
    path = directory / f"{namespace}-{service_account}.kubeconfig"
    kube.write_token_kubeconfig(path, Path(env["KUBECONFIG"]), service_account, token)
    return path


def test_every_command_works_on_a_pool_that_takes_kafka_from_the_chart(
    chart_operator: Child,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
) -> None:
    op = chart_operator
    harness.apply(cli_env, chart_pool(namespace, kafka_bootstrap))
    wait_pool_ready(cli_env, namespace, op)
    env = {k: v for k, v in cli_env.items() if k != "MAILPIPE_KAFKA_BOOTSTRAP"}
    rcpt = f"a-{unique}@x.test"

    out = plugin(env, "suppress", rcpt, "-n", namespace)
    assert out.returncode == 0, out.stderr
    out = plugin(env, "suppressions", "list", "-n", namespace, "-o", "json")
    assert out.returncode == 0, out.stderr
    assert [e["key"] for e in json.loads(out.stdout)] == [rcpt]
    out = plugin(env, "fate", rcpt, "-n", namespace)
    assert out.returncode == 0, out.stderr
    assert f"no event for {rcpt} on mailpipe.{namespace}.news.events" in out.stdout
    # What holds now: a table of the suppressions in force, reason first.
    held = out.stdout.split("suppressed now:", 1)[1].splitlines()
    assert any(line.split()[:2] == ["manual", "kubectl-mailpipe"] for line in held), out.stdout
    out = plugin(env, "unsuppress", rcpt, "-n", namespace)
    assert out.returncode == 0, out.stderr
    # Needs no Kafka: an honest refusal (not paused, or not reported yet), one line.
    out = plugin(env, "unpause-ip", "127.0.0.2", "-n", namespace)
    assert out.returncode == 1 and "nothing to lift" in one_line_error(out)

    # A user who may not read the operator's Deployment is told to name Kafka,
    # and naming it works: the override is honoured before anything else.
    harness.apply(cli_env, TENANT_ROLE.format(ns=namespace))
    tenant = {**env, "KUBECONFIG": str(token_kubeconfig(cli_env, "tenant", namespace, tmp_path))}
    out = plugin(tenant, "suppressions", "list", "-n", namespace)
    assert out.returncode == 2
    assert "--bootstrap or MAILPIPE_KAFKA_BOOTSTRAP" in one_line_error(out)
    with_env = {**tenant, "MAILPIPE_KAFKA_BOOTSTRAP": kafka_bootstrap}
    out = plugin(with_env, "fate", rcpt, "-n", namespace)
    assert out.returncode == 0, out.stderr
    assert "suppressed: no" in out.stdout
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: the flag is what was used
    out = plugin(with_env, "suppressions", "list", "-n", namespace, "--bootstrap", dead)
    assert out.returncode == 1
    error = one_line_error(out)
    assert f"Kafka at {dead}" in error and "give a reachable one with --bootstrap" in error

    out = plugin(env, "uninstall", "-n", namespace, "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr + op.log_section()
    assert "every Campaign and SendingPool is gone" in out.stdout


def test_a_pool_with_an_invalid_spec_gets_one_line_that_says_what_to_do(
    crds: None, cli_env: dict[str, str], namespace: str, kafka_bootstrap: str
) -> None:
    """The API server takes an unknown time zone (the operator reports it as
    UnknownTimeZone); the plugin says so in one line, not a validation dump."""
    doc = yaml.safe_load(pool_manifest("broken", namespace, kafka_bootstrap, "unused"))
    del doc["spec"]["kafka"]["topicPrefix"]
    doc["spec"]["warmup"] = {"timeZone": "Mars/Olympus_Mons"}
    harness.apply(cli_env, yaml.safe_dump(doc))
    out = plugin(cli_env, "suppressions", "list", "-n", namespace, "--pool", "broken")
    assert out.returncode == 2
    error = one_line_error(out)
    assert "sendingpool broken" in error and "invalid spec" in error and "Mars" in error
    assert f"kubectl describe sp broken -n {namespace}" in error
