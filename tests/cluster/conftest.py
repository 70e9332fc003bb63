"""What the node tests share: the image built here, one node per module, the chart installed with
that image, and the check that an uninstall leaves nothing.

A node costs 30-60 s to start, so each module brings one up for all its tests
(module scope, not session: `test_node.py` brings the stack's node up and down
itself, and a node of the session's would be torn down under it). The session's
API server holds other tests' leftovers, so an operator the chart installs here
watches only its test's namespaces (`operator.watchNamespaces` or
`rbac.tenantNamespaces`), and every uninstall is checked to have removed every
object of the release, the cluster-scoped ones (ValidatingAdmissionPolicy,
ClusterRoles) included: a policy left behind refused later tests' pools.
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

from mailpipe.devstack import harness, paths
from mailpipe.devstack.node import Node
from mailpipe.devstack.stack import Stack, StackState
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailpipe"
BUILD_TIMEOUT_SECONDS = 1200  # a cold build: Debian packages and wheels, loaded machine
UNINSTALL_TIMEOUT_SECONDS = 360  # the hook Job's pod starts, then the plugin's own wait
GONE_TIMEOUT_SECONDS = 120  # the namespace's pods terminate (grace period 60 s)
# The build script's last line names what it built or found: "image: <ref> ... (<archive>)".
BUILT_LINE = re.compile(r"^image: (?P<ref>\S+) .*\((?P<archive>/\S+\.oci\.tar)\)$", re.MULTILINE)


@dataclass(frozen=True)
class Image:
    reference: str  # <repository>:<version>-<digest>
    archive: Path  # a hard link of this checkout's archive, safe from the script's pruning

    @property
    def repository(self) -> str:
        return self.reference.rsplit(":", 1)[0]


@pytest.fixture(scope="session")
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
    """The node with its control plane, shared by the module's tests."""
    node = Node(devstack.state_dir)
    started = time.monotonic()
    state = node.up(stack_state)
    print(f"node up in {time.monotonic() - started:.1f}s")
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


def install(
    env: dict[str, str],
    release: str,
    namespace: str,
    image: Image | None,
    *sets: str,
    strings: tuple[str, ...] = (),
) -> str:
    """`helm install` with the image built here, imported into the node, by its
    content tag with pullPolicy Never (the imported image or nothing, there is no
    registry); `image` None: the chart's default image, which names the same
    archive by its version tag. `strings`: values kept as strings (`--set-string`:
    an environment variable's value). Returns helm's output (NOTES included)."""
    values = list(sets)
    if image is not None:
        repository, tag = image.reference.rsplit(":", 1)
        values = [
            f"image.repository={repository}",
            f"image.tag={tag}",
            "image.pullPolicy=Never",
            *sets,
        ]
    return harness.helm_ok(
        env,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--create-namespace",
        *[arg for value in values for arg in ("--set", value)],
        *[arg for value in strings for arg in ("--set-string", value)],
    )


def uninstall(env: dict[str, str], release: str, namespace: str) -> None:
    """`helm uninstall` as a user runs it (its pre-delete hook Job runs on the
    node), then wait until no object of the release is left anywhere."""
    started = time.monotonic()
    out = harness.helm(
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
    assert out.returncode == 0, out.stdout + out.stderr
    assert harness.helm_ok(env, "list", "-A", "-q", "-f", f"^{release}$").strip() == ""
    wait_for(
        lambda: release_objects(env, release) == [],
        GONE_TIMEOUT_SECONDS,
        f"no object of release {release} left (cluster-scoped ones included)",
    )


def operator_pods(env: dict[str, str], namespace: str, release: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={release}"
    pods: list[dict[str, Any]] = harness.get_json(env, "pods", "-n", namespace, "-l", selector)[
        "items"
    ]
    return [p for p in pods if p["metadata"]["name"].startswith(f"{release}-mailpipe-operator-")]


def release_objects(env: dict[str, str], release: str) -> list[str]:
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
