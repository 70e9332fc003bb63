"""The chart on the stack's real node: the operator runs as a pod from the image built here.

The image comes from `scripts/build-image.sh` (cached: rebuilt only when its
inputs change), is imported into the node's containerd, and `helm install`
names it with `imagePullPolicy: Never`, so a pod that runs proves the kubelet
used the imported image and reached no registry. The operator then runs under
the chart's ServiceAccount with in-cluster config (the `kubernetes` Service,
through kube-proxy in the node's namespace), its probes pass, and `helm
uninstall` (its pre-delete hook Job runs on the node too) leaves no object of
the release behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailpipe.devstack import harness, node_plan, paths
from mailpipe.devstack.node import Node
from mailpipe.devstack.stack import Stack, StackState
from tests.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailpipe"
BUILD_TIMEOUT_SECONDS = 1200  # a cold build: Debian packages and wheels, loaded machine
# Image unpack (~80 MB) + Python and kopf start-up + the first probe (readiness
# every 10 s) on a loaded 2-core machine.
OPERATOR_READY_TIMEOUT_SECONDS = 240
UNINSTALL_TIMEOUT_SECONDS = 360  # the hook Job's pod starts, then the plugin's own wait
GONE_TIMEOUT_SECONDS = 120  # the namespace's pods terminate (grace period 60 s)
HELM_TEST_TIMEOUT_SECONDS = 180  # the test pod starts, its script waits up to 60 s
RELAY_READY_TIMEOUT_SECONDS = 240  # topics created, the relay pod started, its consumer joined
# The build script's last line names what it built or found: "image: <ref> ... (<archive>)".
BUILT_LINE = re.compile(r"^image: (?P<ref>\S+) .*\((?P<archive>/\S+\.oci\.tar)\)$", re.MULTILINE)


@dataclass(frozen=True)
class Image:
    reference: str  # <repository>:<version>-<digest>
    archive: Path  # a hard link of this checkout's archive, safe from the script's pruning


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """This checkout's image (built or cached), held by a hard link.

    The script keeps only the newest two archives and other checkouts build
    theirs into the same cache, so the link is taken under the script's own
    lock: a later build elsewhere cannot remove the file from under the import."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    print(out.stdout.strip())
    built = BUILT_LINE.search(out.stdout)
    assert built is not None, out.stdout
    held = tmp_path_factory.mktemp("image") / "mailpipe.oci.tar"
    with (paths.cache_dir() / "images" / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            os.link(built["archive"], held)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return Image(built["ref"], held)


@pytest.fixture(scope="module")
def node(devstack: Stack, stack_state: StackState) -> Iterator[Node]:
    """The node with its control plane, shared by this module's tests."""
    node = Node(devstack.state_dir)
    state = node.up(stack_state)
    try:
        yield node
        peak = node.memory_peak_bytes(state)
        print(f"node cgroup peak memory {peak / 2**20:.0f} MiB (operator and relay pods included)")
    finally:
        node.down()
    assert node.leftovers(state) == []


@pytest.fixture(scope="module")
def imported(node: Node, image: Image) -> list[str]:
    """The image's names, once it is in the node's containerd."""
    started = time.monotonic()
    names = node.import_image(image.archive)
    print(f"image {image.reference} imported in {time.monotonic() - started:.1f}s")
    assert image.reference in names
    return names


def _install(env: dict[str, str], release: str, namespace: str, image: Image, *sets: str) -> None:
    repository, tag = image.reference.rsplit(":", 1)
    values = [
        f"image.repository={repository}",
        f"image.tag={tag}",
        "image.pullPolicy=Never",  # the imported image or nothing: no registry here
        *sets,
    ]
    harness.helm_ok(
        env,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--create-namespace",
        *[arg for value in values for arg in ("--set", value)],
    )


def _uninstall(env: dict[str, str], release: str, namespace: str) -> None:
    started = time.monotonic()
    uninstall = harness.helm(
        env,
        "uninstall",
        release,
        "-n",
        namespace,
        "--wait",
        f"--timeout={UNINSTALL_TIMEOUT_SECONDS}s",
        timeout_seconds=UNINSTALL_TIMEOUT_SECONDS + 60,
    )
    print(f"helm uninstall in {time.monotonic() - started:.1f}s")
    assert uninstall.returncode == 0, uninstall.stdout + uninstall.stderr


def _operator_pods(env: dict[str, str], namespace: str, release: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={release}"
    pods: list[dict[str, Any]] = harness.get_json(env, "pods", "-n", namespace, "-l", selector)[
        "items"
    ]
    return [p for p in pods if p["metadata"]["name"].startswith(f"{release}-mailpipe-operator-")]


def _release_objects(env: dict[str, str], release: str) -> list[str]:
    """Every object labelled with the release, of every listable kind, in every
    namespace and cluster-wide (CRDs aside: helm never deletes a chart's crds/)."""
    kinds = harness.kubectl_ok(env, "api-resources", "--verbs=list", "-o", "name").split()
    kinds = [k for k in kinds if k not in {"events", "events.events.k8s.io"}]
    got = harness.kubectl(
        env,
        "get",
        ",".join(kinds),
        "-A",
        "-l",
        f"app.kubernetes.io/instance={release}",
        "-o",
        "json",
    )
    assert got.returncode == 0, got.stderr
    items = json.loads(got.stdout)["items"]
    return sorted(
        f"{i['kind']}/{i['metadata'].get('namespace', '')}/{i['metadata']['name']}"
        for i in items
        if i["kind"] != "CustomResourceDefinition"
    )


def test_the_operator_runs_as_a_pod_from_the_chart_and_uninstall_leaves_nothing(
    imported: list[str], image: Image, stack_state: StackState, unique: str
) -> None:
    env = {**os.environ, **stack_state.env()}
    release, namespace = f"n{unique}", f"mailpipe-{unique}"
    started = time.monotonic()
    _install(env, release, namespace, image)
    try:

        def operator_ready() -> bool:
            pods = _operator_pods(env, namespace, release)
            return len(pods) == 1 and harness.condition_true(pods[0])

        wait_for(
            operator_ready,
            OPERATOR_READY_TIMEOUT_SECONDS,
            "the operator pod Ready (its /healthz probes pass)",
        )
        print(f"operator pod Ready {time.monotonic() - started:.1f}s after helm install")
        [pod] = _operator_pods(env, namespace, release)
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
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "Phase:          Succeeded" in tested.stdout, tested.stdout
    finally:
        _uninstall(env, release, namespace)
    assert harness.helm_ok(env, "list", "-A", "-q", "-f", f"^{release}$").strip() == ""
    wait_for(
        lambda: _release_objects(env, release) == [],
        GONE_TIMEOUT_SECONDS,
        "no object of the release left",
    )
    wait_for(
        lambda: harness.get_json(env, "pods", "-n", namespace)["items"] == [],
        GONE_TIMEOUT_SECONDS,
        "no pod left in the release's namespace (the hook Job's included)",
    )
    harness.kubectl(env, "delete", "namespace", namespace, "--wait=false")


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
    repository = image.reference.rsplit(":", 1)[0]
    _install(
        env,
        release,
        namespace,
        image,
        f"kafka.bootstrapServers={bootstrap}",
        f"rbac.tenantNamespaces={{{tenant}}}",
        f"policy.allowedImages={{{repository}:*}}",
        f"policy.allowedBootstrapServers={{{bootstrap}}}",
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
        _uninstall(env, release, namespace)
    # The pool's children went with it (ownerReferences or the operator).
    wait_for(
        lambda: harness.get_json(env, "pods", "-n", tenant)["items"] == [],
        GONE_TIMEOUT_SECONDS,
        "no relay pod left",
    )
    wait_for(
        lambda: _release_objects(env, release) == [],
        GONE_TIMEOUT_SECONDS,
        "no object of the release left (the operator pod terminates)",
    )
    harness.kubectl(env, "delete", "namespace", tenant, namespace, "--wait=false")
