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
    finally:
        node.down()
    assert node.leftovers(state) == []


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
    node: Node, image: Image, stack_state: StackState, unique: str
) -> None:
    env = {**os.environ, **stack_state.env()}
    started = time.monotonic()
    names = node.import_image(image.archive)
    print(f"image {image.reference} imported in {time.monotonic() - started:.1f}s")
    assert image.reference in names
    repository, tag = image.reference.rsplit(":", 1)

    release, namespace = f"n{unique}", f"mailpipe-{unique}"
    started = time.monotonic()
    harness.helm_ok(
        env,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--create-namespace",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",  # the imported image or nothing: no registry here
    )
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
        [container] = status["containerStatuses"]
        assert spec["containers"][0]["image"] == image.reference
        # The kubelet reports the image by one of its names (the archive's two
        # tags are one image): the imported one, not a pull.
        assert container["image"] in names, container["image"]
        assert container["ready"] and container["restartCount"] == 0, container
        logs = harness.kubectl_ok(env, "logs", "-n", namespace, pod["metadata"]["name"])
        assert logs.strip(), "the operator pod logged nothing"
        print(logs[-2000:])
        # Its ServiceAccount token reached the API server: the operator
        # announced itself on the cluster through its own identity.
        assert "Traceback" not in logs, logs[-4000:]
    finally:
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
