"""What the node tests share: the image built here, one node per module, the chart installed with
that image, the check that an uninstall leaves nothing, and a release whose pools deliver
to a recording receiver (`delivering`).

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

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailpipe.devstack import harness
from mailpipe.devstack.dns import Zone
from mailpipe.devstack.node import Node
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.devstack.stack import Stack, StackState
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailpipe"
BUILD_TIMEOUT_SECONDS = 1200  # a cold build: Debian packages and wheels, loaded machine
UNINSTALL_TIMEOUT_SECONDS = 360  # the hook Job's pod starts, then the plugin's own wait
GONE_TIMEOUT_SECONDS = 120  # the namespace's pods terminate (grace period 60 s)
OPERATOR_READY_TIMEOUT_SECONDS = 240  # image unpack, Python and kopf start, first probe
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
    theirs into the same cache, so the script itself takes the link while it
    holds its lock (`MAILPIPE_IMAGE_HOLD`): a build elsewhere cannot remove the
    file before it is held (a link taken after the script ended once found it
    pruned already)."""
    held = tmp_path_factory.mktemp("image") / "mailpipe.oci.tar"
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
        env={**os.environ, "MAILPIPE_IMAGE_HOLD": str(held)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    print(out.stdout.strip())
    built = BUILT_LINE.search(out.stdout)
    assert built is not None, out.stdout
    assert held.is_file(), f"the script did not hold the archive at {held}"
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


# In a relay pod's own network namespace a loopback address is local: a pool
# on the pod network that binds it runs, though it reaches nothing beyond the pod.
LOOPBACK_EGRESS = (("127.0.0.2", "egress-2.sender.test"),)


def sending_pool(
    name: str,
    tenant: str,
    egress: Sequence[tuple[str, str]] = LOOPBACK_EGRESS,
    partitions: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    """A SendingPool of one relay with these (address, HELO) egress IPs; `spec`:
    more (or other) spec fields, camelCase."""
    return {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": tenant},
        "spec": {
            "replicas": 1,
            "kafka": {"partitions": partitions},
            "egressIPs": [{"address": a, "helo": h} for a, h in egress],
            **spec,
        },
    }


def campaign_manifest(name: str, tenant: str, pool: str, recipients: list[str]) -> dict[str, Any]:
    """A plain-text Campaign to `recipients` (inline audience) through `pool`."""
    return {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": name, "namespace": tenant},
        "spec": {
            "poolRef": pool,
            "from": {"address": "news@sender.test"},
            "subject": "Hello",
            "text": "Hi",
            "audience": {"inline": [{"address": r} for r in recipients]},
        },
    }


def ready_condition(env: dict[str, str], kind: str, name: str, namespace: str) -> dict[str, Any]:
    """The object's Ready condition ({} when it has none yet)."""
    obj = harness.get_object(env, kind, name, namespace) or {}
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"]
    return found[0] if found else {}


def pool_pods(env: dict[str, str], tenant: str, pool: str) -> list[dict[str, Any]]:
    """The pool's relay pods, those being deleted left out."""
    items: list[dict[str, Any]] = harness.get_json(
        env, "pods", "-n", tenant, "-l", f"mailpipe.io/pool={pool}"
    )["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def campaign_phase(env: dict[str, str], tenant: str, name: str) -> str | None:
    camp = harness.get_object(env, "camp", name, tenant) or {}
    phase = camp.get("status", {}).get("phase")
    return None if phase is None else str(phase)


@dataclass(frozen=True)
class Delivering:
    """The chart installed with the image built here, its operator Ready, watching
    `tenant`, whose pools deliver to `rx` by MX records in the stack's dnsmasq."""

    env: dict[str, str]
    name: str  # the release
    namespace: str  # the release's namespace
    tenant: str
    rx: SMTPReceiver
    bootstrap: str  # the stack's Kafka, as pods reach it
    common: dict[str, Any]  # pool spec fields: the resolver, SMTP port, inward delivery


@contextlib.contextmanager
def delivering(
    node: Node,
    image: Image,
    stack_state: StackState,
    rx: SMTPReceiver,
    set_dns: Callable[[list[Zone]], object],
    domains: Sequence[str],
    name: str,
    tenant: str,
    *sets: str,
) -> Iterator[Delivering]:
    """Install release `name` for `tenant`, its cluster policy allowing what the
    pools need to reach `rx` (on the host's loopback, reached from the node at
    the host end of the link, as the MX of every domain of `domains`) and
    nothing more; `sets`: more chart values. Everything goes on the way out:
    campaigns and pools first (their finalizers need the operator), then the
    release (checked to leave nothing), then the namespaces."""
    env = {**os.environ, **stack_state.env()}
    mx_host, _, _ = node.expose(rx.port).partition(":")
    dns_port = stack_state.dns_port
    resolver = f"{node.expose(dns_port, 'udp').rpartition(':')[0]}:{dns_port}"
    node.expose(dns_port, "tcp")  # a truncated answer is asked again over TCP
    set_dns([Zone(d, mx=((f"mx.{d}", 10),), a={f"mx.{d}": mx_host}) for d in domains])
    bootstrap = node.expose_kafka(stack_state)
    namespace = f"mailpipe-{name}"
    harness.kubectl_ok(env, "create", "namespace", tenant)
    install(
        env,
        name,
        namespace,
        image,
        f"kafka.bootstrapServers={bootstrap}",
        f"operator.watchNamespaces={{{tenant}}}",
        f"policy.allowedImages={{{image.repository}:*}}",
        f"policy.allowedBootstrapServers={{{bootstrap}}}",
        f"policy.privateDestinationNamespaces={{{tenant}}}",
        f"policy.allowedDnsNameservers={{{resolver}}}",
        f"policy.allowedSmtpPorts={{{rx.port}}}",
        *sets,
    )
    try:
        wait_for(
            lambda: any(harness.condition_true(p) for p in operator_pods(env, namespace, name)),
            OPERATOR_READY_TIMEOUT_SECONDS,
            "the operator pod Ready",
        )
        common = {
            "dnsNameserver": resolver,
            "smtpPort": rx.port,
            "delivery": {"allowPrivateDestinations": True},
        }
        yield Delivering(env, name, namespace, tenant, rx, bootstrap, common)
    finally:
        harness.kubectl(env, "delete", "campaigns", "--all", "-n", tenant, "--wait=true")
        harness.kubectl(env, "delete", "sendingpools", "--all", "-n", tenant, "--wait=true")
        uninstall(env, name, namespace)
        harness.kubectl(env, "delete", "namespace", tenant, namespace, "--wait=false")
