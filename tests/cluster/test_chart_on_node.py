"""The chart on the stack's real node: the operator runs as a pod from the image built here.

The image comes from `scripts/build-image.sh` (cached: rebuilt only when its
inputs change), is imported into the node's containerd, and `helm install`
names it with `imagePullPolicy: Never`, so a pod that runs proves the kubelet
used the imported image and reached no registry. The operator then runs under
the chart's ServiceAccount with in-cluster config (the `kubernetes` Service,
through kube-proxy in the node's namespace), its probes pass, `helm test` runs
its pod and passes only when the operator answers, the operator signs the
relay configs it writes with the release's key and says Forbidden where the
chart did not onboard it, and `helm uninstall` (its pre-delete hook Job runs
on the node too, and deletes the CRs) leaves no object of the release behind.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from typing import Any

import pytest

from mailpipe.contracts.signing import PUBLIC_KEY_ENV, ConfigSigner, ConfigVerifier, trusted_config
from mailpipe.devstack import harness, node_plan
from mailpipe.devstack.node import Node
from mailpipe.devstack.stack import StackState
from mailpipe.operator.config_signing import SIGNATURE_KEY
from mailpipe.operator.pool import CONFIG_KEY
from tests.cluster.conftest import (
    CHART,
    GONE_TIMEOUT_SECONDS,
    Image,
    install,
    operator_pods,
    uninstall,
)
from tests.conftest import wait_for
from tests.operator.integration.conftest import pool_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

# Image unpack (~80 MB) + Python and kopf start-up + the first probe (readiness
# every 10 s) on a loaded 2-core machine.
OPERATOR_READY_TIMEOUT_SECONDS = 240
HELM_TEST_TIMEOUT_SECONDS = 180  # the test pod starts, its script waits up to 60 s
RELAY_READY_TIMEOUT_SECONDS = 240  # topics created, the relay pod started, its consumer joined
RECONCILE_TIMEOUT_SECONDS = 120  # the operator pod sees a pool and writes its children


def _helm_test(
    env: dict[str, str], release: str, namespace: str
) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    tested = harness.helm(
        env,
        "test",
        release,
        "-n",
        namespace,
        "--logs",
        f"--timeout={HELM_TEST_TIMEOUT_SECONDS}s",
        timeout_seconds=HELM_TEST_TIMEOUT_SECONDS + 60,
    )
    print(f"helm test in {time.monotonic() - started:.1f}s:\n{tested.stdout[-1500:]}")
    return tested


def _waiting_campaign(name: str, namespace: str) -> dict[str, Any]:
    """A Campaign for a pool that does not exist: it waits, holding the operator's finalizer."""
    return {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "poolRef": "absent",
            "from": {"address": "news@sender.test"},
            "subject": "Hello",
            "text": "Hi",
            "audience": {"inline": [{"address": "a@x.test"}]},
        },
    }


def test_the_operator_runs_as_a_pod_from_the_chart_and_uninstall_leaves_nothing(
    imported: list[str], image: Image, stack_state: StackState, unique: str
) -> None:
    """Installed with no operator replica first: the chart's own test pod fails,
    saying nobody answered (it cannot pass without an operator); then with one,
    which runs as a pod, and the same test passes."""
    env = {**os.environ, **stack_state.env()}
    release, namespace = f"n{unique}", f"mailpipe-{unique}"
    # Watching only its own namespace: the session's API server holds other
    # tests' objects, and the uninstall hook deletes every CR the operator watches.
    watch = f"operator.watchNamespaces={{{namespace}}}"
    harness.kubectl_ok(env, "create", "namespace", namespace)  # the chart checks it exists
    install(env, release, namespace, image, watch, "operator.replicas=0")
    try:
        nobody = _helm_test(env, release, namespace)
        assert nobody.returncode != 0, nobody.stdout
        assert "the operator did not answer" in nobody.stdout, nobody.stdout + nobody.stderr

        started = time.monotonic()
        harness.helm_ok(
            env,
            "upgrade",
            release,
            str(CHART),
            "-n",
            namespace,
            "--reuse-values",
            "--set",
            "operator.replicas=1",
        )

        def operator_ready() -> bool:
            pods = operator_pods(env, namespace, release)
            return len(pods) == 1 and harness.condition_true(pods[0])

        wait_for(
            operator_ready,
            OPERATOR_READY_TIMEOUT_SECONDS,
            "the operator pod Ready (its /healthz probes pass)",
        )
        print(f"operator pod Ready {time.monotonic() - started:.1f}s after helm upgrade")
        [pod] = operator_pods(env, namespace, release)
        spec, status = pod["spec"], pod["status"]
        assert spec["nodeName"] == node_plan.NODE_NAME
        assert spec["serviceAccountName"] == f"{release}-mailpipe-operator"
        assert spec["containers"][0]["image"] == image.reference
        [container] = status["containerStatuses"]
        # The kubelet reports the image by one of its names (the archive's two
        # tags are one image): the imported one, not a pull.
        assert container["image"] in imported, container["image"]
        assert container["ready"] and container["restartCount"] == 0, container
        logs = harness.kubectl_ok(env, "logs", "-n", namespace, pod["metadata"]["name"])
        print(logs[-2000:])
        # In-cluster config: kopf logged in with the pod's ServiceAccount token
        # (no kubeconfig is in the pod) and the kubelet's probes got answers.
        assert "Activity 'login_via_client' succeeded" in logs, logs[-4000:]
        assert '"GET /healthz HTTP/1.1" 200' in logs, logs[-4000:]
        assert "Traceback" not in logs, logs[-4000:]
        # The chart's own test pod (templates/tests) runs on the node and
        # passes only when the operator answers.
        tested = _helm_test(env, release, namespace)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "Phase:          Succeeded" in tested.stdout, tested.stdout
        assert "operator answered: fan-out waitingForPool" in tested.stdout, tested.stdout
        assert "released the campaign" in tested.stdout, tested.stdout
        # A CR left for the uninstall: the hook deletes it while the operator runs.
        harness.apply(env, _waiting_campaign("left", namespace))
        wait_for(
            lambda: bool(
                (harness.get_object(env, "campaigns.mailpipe.io", "left", namespace) or {})
                .get("metadata", {})
                .get("finalizers")
            ),
            RECONCILE_TIMEOUT_SECONDS,
            "the operator's finalizer on the campaign",
        )
    finally:
        uninstall(env, release, namespace)
    assert harness.get_object(env, "campaigns.mailpipe.io", "left", namespace) is None
    wait_for(
        lambda: harness.get_json(env, "pods", "-n", namespace)["items"] == [],
        GONE_TIMEOUT_SECONDS,
        "no pod left in the release's namespace (the hook Job's and the test pods included)",
    )
    harness.kubectl(env, "delete", "namespace", namespace, "--wait=false")


def _ready_reason(env: dict[str, str], namespace: str) -> dict[str, Any]:
    pool = harness.get_object(env, "sp", "news", namespace) or {}
    conditions = (pool.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _signing_key(env: dict[str, str], release: str, namespace: str) -> str:
    secret = harness.get_object(env, "secret", f"{release}-mailpipe-config-signing", namespace)
    return str((secret or {})["data"]["ed25519.pem"])


def test_the_operator_pod_signs_relays_where_onboarded_and_says_forbidden_elsewhere(
    node: Node, imported: list[str], image: Image, stack_state: StackState, unique: str
) -> None:
    """Cluster-wide mode, one tenant namespace onboarded (`rbac.tenantNamespaces`).

    Where onboarded, the operator (a pod, as the chart's ServiceAccount) signs
    the relay config it writes with the key the chart made in the release
    namespace, and names that key's public half in the relay Deployment; an
    upgrade keeps the key (relays do not roll). Where not, it makes nothing and
    says why: Ready=False, reason Forbidden, naming the chart value that
    onboards a namespace.

    Installed with the chart's default image, which the README says how to
    build and load (`make image`, then an import into the node): no image value
    set, the operator pod and the relays run it, and NOTES say where it comes
    from."""
    env = {**os.environ, **stack_state.env()}
    bootstrap = node.expose_kafka(stack_state)
    release, namespace = f"s{unique}", f"mailpipe-s{unique}"
    team_a, team_b = f"team-a-{unique}", f"team-b-{unique}"
    for ns in (team_a, team_b):
        harness.kubectl_ok(env, "create", "namespace", ns)
    version = image.reference.rsplit(":", 1)[1].split("-", 1)[0]
    default_image = f"{image.repository}:{version}"
    assert default_image in imported  # the archive names it by its version too
    installed = install(
        env,
        release,
        namespace,
        None,
        f"rbac.tenantNamespaces={{{team_a}}}",
        f"kafka.bootstrapServers={bootstrap}",
        f"policy.allowedBootstrapServers={{{bootstrap}}}",
        # The hook of a cluster-wide release deletes the CRs of every namespace:
        # in the session's shared API server, other tests' too. The pools go below.
        "uninstallHook.enabled=false",
    )
    assert f"The image {default_image} is built from the chart's source" in installed, installed
    try:
        pem = _signing_key(env, release, namespace)
        signer = ConfigSigner.from_pem(base64.b64decode(pem))
        for ns in (team_a, team_b):
            harness.apply(env, pool_manifest("news", ns, bootstrap, f"mailpipe.{ns}.news"))
        wait_for(
            lambda: harness.get_object(env, "deploy", "mailpipe-relay-news", team_a) is not None,
            OPERATOR_READY_TIMEOUT_SECONDS + RECONCILE_TIMEOUT_SECONDS,
            "the relay Deployment in the onboarded namespace",
        )
        [pod] = operator_pods(env, namespace, release)
        assert pod["spec"]["containers"][0]["image"] == default_image
        deployment = harness.get_object(env, "deploy", "mailpipe-relay-news", team_a) or {}
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == default_image
        relay_env = {e["name"]: e.get("value") for e in container["env"]}
        assert relay_env[PUBLIC_KEY_ENV] == signer.public_key
        data = (harness.get_object(env, "cm", "mailpipe-relay-news", team_a) or {})["data"]
        verifier = ConfigVerifier.from_base64(relay_env[PUBLIC_KEY_ENV], f"{team_a}/news")
        trusted_config(data[CONFIG_KEY], data[SIGNATURE_KEY], verifier)

        wait_for(
            lambda: _ready_reason(env, team_b).get("reason") == "Forbidden",
            RECONCILE_TIMEOUT_SECONDS,
            "Forbidden in the namespace not onboarded",
        )
        assert "rbac.tenantNamespaces" in _ready_reason(env, team_b)["message"]
        assert harness.kubectl_ok(env, "get", "deploy", "-n", team_b, "-o", "name") == ""

        harness.helm_ok(env, "upgrade", release, str(CHART), "-n", namespace, "--reuse-values")
        assert _signing_key(env, release, namespace) == pem, (
            "an upgrade made a new key: every relay would roll"
        )
    finally:
        # while the operator runs: it holds the finalizer and removes the relays
        harness.kubectl(env, "delete", "sp", "news", "-n", team_a, "--wait=true")
        # Not onboarded, nothing was made there; on the node its delete waited
        # more than 300 s for the operator's finalizer (not yet explained), so
        # its namespace goes without it.
        harness.kubectl(env, "delete", "sp", "news", "-n", team_b, "--wait=false")
        uninstall(env, release, namespace)
        harness.kubectl(
            env, "patch", "sp", "news", "-n", team_b, "--type=merge",
            "-p", '{"metadata":{"finalizers":null}}',
        )  # fmt: skip
    harness.kubectl(env, "delete", "namespace", team_a, team_b, namespace, "--wait=false")


def _pool(name: str, namespace: str) -> dict[str, Any]:
    """A pool left to the chart's Kafka and relay image, in the pod network."""
    return {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "kafka": {"partitions": 1},
            # A loopback address: in the relay pod's own namespace it is local.
            "egressIPs": [{"address": "127.0.0.2", "helo": "egress-2.sender.test"}],
        },
    }


def test_a_sending_pool_gets_a_ready_relay_pod_that_reads_kafka_on_the_node(
    node: Node, imported: list[str], image: Image, stack_state: StackState, unique: str
) -> None:
    """Kafka from pods (the operator's topics, the relay's consumer) through the
    broker's pods listener and the node's Kafka Service."""
    env = {**os.environ, **stack_state.env()}
    bootstrap = node.expose_kafka(stack_state)
    release, namespace, tenant = f"p{unique}", f"mailpipe-p{unique}", f"tenant-{unique}"
    harness.kubectl_ok(env, "create", "namespace", tenant)
    install(
        env,
        release,
        namespace,
        image,
        f"kafka.bootstrapServers={bootstrap}",
        f"rbac.tenantNamespaces={{{tenant}}}",
        f"policy.allowedImages={{{image.repository}:*}}",
        f"policy.allowedBootstrapServers={{{bootstrap}}}",
        # The hook of a cluster-wide release deletes the CRs of every namespace:
        # in the session's shared API server, other tests' too. The pool goes below.
        "uninstallHook.enabled=false",
    )
    try:
        harness.apply(env, _pool("news", tenant))
        started = time.monotonic()

        def relay_ready() -> bool:
            pods = harness.get_json(env, "pods", "-n", tenant, "-l", "mailpipe.io/pool=news")[
                "items"
            ]
            return len(pods) == 1 and harness.condition_true(pods[0])

        wait_for(relay_ready, RELAY_READY_TIMEOUT_SECONDS, "the relay pod Ready")
        print(f"relay pod Ready {time.monotonic() - started:.1f}s after the pool was applied")
        [pod] = harness.get_json(env, "pods", "-n", tenant, "-l", "mailpipe.io/pool=news")["items"]
        assert pod["spec"]["nodeName"] == node_plan.NODE_NAME
        assert pod["spec"]["containers"][0]["image"] == image.reference
        assert not pod["spec"].get("hostNetwork", False)
        logs = harness.kubectl_ok(env, "logs", "-n", tenant, pod["metadata"]["name"])
        print(logs[-2000:])
        # Its consumer joined the group: it reached the broker at the address
        # the pods listener advertises, not only the bootstrap.
        assert "assigned 1 of 1 outbound partitions" in logs, logs[-4000:]
        # The operator (a pod too) created the topics through the same listener.
        wait_for(
            lambda: harness.condition_true(
                harness.get_json(env, "sendingpool", "news", "-n", tenant)
            ),
            RELAY_READY_TIMEOUT_SECONDS,
            "the pool Ready",
        )
        status = harness.get_json(env, "sendingpool", "news", "-n", tenant)["status"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["TopicsReady"]["status"] == "True", conditions
        assert conditions["Ready"]["reason"] == "RelaysAvailable", conditions
    finally:
        harness.kubectl(env, "delete", "sendingpool", "news", "-n", tenant, "--wait=true")
        uninstall(env, release, namespace)
    # The pool's children went with it (ownerReferences or the operator).
    wait_for(
        lambda: harness.get_json(env, "pods", "-n", tenant)["items"] == [],
        GONE_TIMEOUT_SECONDS,
        "no relay pod left",
    )
    harness.kubectl(env, "delete", "namespace", tenant, namespace, "--wait=false")
