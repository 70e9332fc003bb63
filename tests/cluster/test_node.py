"""The stack's real Kubernetes node: pods run on it, and `down` leaves nothing.

Brought up against the session's stack: containerd and a kubelet in a network
namespace of their own, kube-scheduler and kube-controller-manager beside the
API server. What `down` must remove is checked twice: by the node's own
`leftovers` (its recorded names) and by comparing the machine before and
after (interfaces, iptables rules, mounts, top-level cgroups, processes in the
node's cgroup or namespaces), so a thing the node forgot to record shows too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mailpipe.devstack import harness, kube, node_plan, procs
from mailpipe.devstack.node import Node, NodeError, NodeState
from mailpipe.devstack.node_plan import Link
from mailpipe.devstack.procs import ComponentFailed
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.devstack.stack import Stack, StackState
from tests.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

POD_RUNNING_TIMEOUT_SECONDS = 120  # sandbox + container start on a loaded 2-core machine
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Mounts a node could leave outside its own directory (which `leftovers`
# covers): system paths. Not all of /tmp: other work on a shared machine
# mounts there (a root filesystem being built) while the node comes and goes.
SYSTEM_MOUNT_PREFIXES = ("/run", "/var", "/etc", "/opt", "/usr", "/sys", "/dev", "/proc")
# Where the kubelet, containerd and libcni write whatever they are told. Not
# /etc/cni: buildah and podman (other work on a shared machine) lock files there.
HOST_PATHS = [
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/lib/cni/results",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/run/containerd/s",
    "/var/lib/containerd",
    "/run/netns",
    "/opt/containerd",
    "/usr/libexec/kubernetes",
]
ZOMBIE_REAPED_TIMEOUT_SECONDS = 30  # PID 1 here reaps orphans within seconds
CLI_UP_TIMEOUT_SECONDS = 420  # Kafka's JVM, etcd, the API server, then the node, loaded machine
CLI_TIMEOUT_SECONDS = 120


def _snapshot() -> dict[str, Any]:
    """What of the machine a node could leave behind, outside its own directory
    (mounts under it are in `Node.leftovers`, also asserted)."""
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    return {
        "interfaces": sorted(os.listdir("/sys/class/net")),
        "iptables rules": sorted(line for line in rules.splitlines() if line.startswith("-A")),
        "mounts": sorted(
            point
            for point in (line.split()[4] for line in mountinfo)
            if point.startswith(SYSTEM_MOUNT_PREFIXES)
        ),
        "host paths": {p: sorted(os.listdir(p)) if os.path.isdir(p) else None for p in HOST_PATHS},
        "cgroups": sorted(
            str(d) for h in CGROUP_ROOT.iterdir() if h.is_dir() for d in h.iterdir() if d.is_dir()
        ),
    }


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What differs between two snapshots, item by item (empty: nothing)."""
    changes: dict[str, Any] = {}
    for key, old in before.items():
        new = after[key]
        if old == new:
            continue
        if isinstance(old, list):
            changes[key] = {
                "added": sorted(set(new) - set(old)),
                "removed": sorted(set(old) - set(new)),
                "count": (len(old), len(new)),
            }
        else:
            changes[key] = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
    return changes


def _pids_in_cgroup(fragment: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if fragment in (proc / "cgroup").read_text():
                    found.append(int(proc.name))
            except OSError:
                continue  # exited while we looked
    return found


def _describe(pids: list[int]) -> list[str]:
    """Name, state and parent of each pid, for the failure message."""
    described = []
    for pid in pids:
        try:
            status = dict(
                line.split(":\t", 1)
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line
            )
            described.append(f"{pid} {status['Name']} {status['State']} ppid {status['PPid']}")
        except OSError:
            described.append(f"{pid} (gone)")
    return described


def _rss_anon_kib(pid: int) -> int:
    """A process's own memory (RssAnon), without the shared binary pages RSS counts."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _pids_in_netns(inodes: set[int]) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if _netns_inode(int(proc.name)) in inodes:
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _pod(name: str, namespace: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node_plan.NODE_NAME,  # the kubelet alone, no scheduler
            "automountServiceAccountToken": False,
            "containers": [{"name": "pause", "image": image, "imagePullPolicy": "Never"}],
        },
    }


def _deployment(name: str, namespace: str, image: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "pause", "image": image, "imagePullPolicy": "IfNotPresent"}
                    ]
                },
            },
        },
    }


def _readyz_pod(name: str, namespace: str, image: str) -> dict[str, Any]:
    """A pod that asks the API server's /readyz as in-cluster clients do (deps/pause)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "readyz",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["/pause", "apiserver-readyz"],
                }
            ],
        },
    }


def _banner_pod(name: str, namespace: str, image: str, address: str) -> dict[str, Any]:
    """A pod that reads the greeting of the server at `address` (deps/pause)."""
    pod = _readyz_pod(name, namespace, image)
    pod["spec"]["containers"][0]["command"] = ["/pause", "tcp-banner", address]
    return pod


def _phase(env: dict[str, str], namespace: str, name: str) -> str:
    pod = harness.get_object(env, "pod", name, namespace)
    return str((pod or {}).get("status", {}).get("phase", ""))


def _running_pods(env: dict[str, str], namespace: str) -> list[dict[str, Any]]:
    pods = harness.get_json(env, "pods", "-n", namespace)["items"]
    return [p for p in pods if p["status"].get("phase") == "Running"]


def test_pods_run_on_the_node_and_down_leaves_nothing(
    devstack: Stack, stack_state: StackState, unique: str
) -> None:
    env = {**os.environ, **stack_state.env()}
    before = _snapshot()
    node = Node(devstack.state_dir)
    started = time.monotonic()
    state: NodeState = node.up(stack_state)
    up_seconds = time.monotonic() - started
    namespace = f"node-{unique}"
    try:
        harness.kubectl_ok(env, "create", "namespace", namespace)
        # The ServiceAccount admission needs `default`; the controller-manager
        # makes it, and the pod must not race it.
        wait_for(
            lambda: harness.kubectl(env, "get", "sa", "default", "-n", namespace).returncode == 0,
            POD_RUNNING_TIMEOUT_SECONDS,
            "the controller-manager to create the namespace's default ServiceAccount",
        )
        harness.apply(env, _pod("bound", namespace, state.pause_image))
        harness.apply(env, _deployment("scheduled", namespace, state.pause_image, 2))
        wait_for(
            lambda: len(_running_pods(env, namespace)) == 3,
            POD_RUNNING_TIMEOUT_SECONDS,
            "the bound pod and both Deployment pods Running",
        )
        wait_for(
            lambda: (
                harness.get_json(env, "deployment", "scheduled", "-n", namespace)["status"].get(
                    "availableReplicas"
                )
                == 2
            ),
            POD_RUNNING_TIMEOUT_SECONDS,
            "the Deployment to report 2 available replicas",
        )
        pods = _running_pods(env, namespace)
        pod_net = ipaddress.IPv4Network(node_plan.POD_CIDR)
        assert all(ipaddress.IPv4Address(p["status"]["podIP"]) in pod_net for p in pods)
        assert {p["spec"]["nodeName"] for p in pods} == {node_plan.NODE_NAME}
        # The API server reaches the kubelet across the link (logs, exec).
        scheduled = next(p for p in pods if p["metadata"]["name"] != "bound")
        harness.kubectl_ok(env, "logs", "-n", namespace, scheduled["metadata"]["name"])
        node_obj = harness.get_json(env, "node", node_plan.NODE_NAME)
        addresses = {a["type"]: a["address"] for a in node_obj["status"]["addresses"]}
        assert ipaddress.IPv4Address(addresses["InternalIP"]) in ipaddress.IPv4Network(state.link)

        # In-cluster config from a pod: the `kubernetes` Service (kube-proxy's
        # rules in the node's namespace) leads to the API server on loopback.
        harness.apply(env, _readyz_pod("readyz", namespace, state.pause_image))
        wait_for(
            lambda: _phase(env, namespace, "readyz") in {"Succeeded", "Failed"},
            POD_RUNNING_TIMEOUT_SECONDS,
            "the readyz pod to finish",
        )
        answer = harness.kubectl_ok(env, "logs", "-n", namespace, "readyz")
        assert _phase(env, namespace, "readyz") == "Succeeded", answer
        assert f"https://{kube.KUBERNETES_SERVICE_IP}:443/readyz: 200 ok" in answer

        # Contained: the node's namespace routes the link, the pods' bridge and the Service
        # range over the link (hostNetwork pods reach ClusterIPs), nothing else.
        routes = subprocess.run(
            node_plan.in_netns(state.layout, ["ip", "-4", "route", "show"]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert sorted(line.split()[0] for line in routes.splitlines()) == sorted(
            [state.link, node_plan.POD_CIDR, kube.SERVICE_CIDR]
        ), routes

        # A test host of the stack (an SMTP receiver on loopback) exposed to pods.
        port = procs.free_port()
        with SMTPReceiver("127.0.0.1", port) as receiver:
            address = node.expose(port)
            harness.apply(env, _banner_pod("banner", namespace, state.pause_image, address))
            wait_for(
                lambda: _phase(env, namespace, "banner") in {"Succeeded", "Failed"},
                POD_RUNNING_TIMEOUT_SECONDS,
                "the banner pod to finish",
            )
            banner = harness.kubectl_ok(env, "logs", "-n", namespace, "banner")
            assert _phase(env, namespace, "banner") == "Succeeded", banner
            assert f"{address}: 220 " in banner and "mailpipe-test-receiver" in banner
            # The pod's connection arrived from the node's end of the link (the
            # other one, from 127.0.0.1, is the receiver's own start-up probe).
            node_ip = Link(ipaddress.IPv4Network(state.link)).node_ip
            assert set(receiver.connections()) == {node_ip, "127.0.0.1"}

        container_pids = _pids_in_cgroup(state.names.pods_cgroup + "/")
        assert container_pids, "no container process in the node's pods cgroup"
        netns_inodes = {_netns_inode(pid) for pid in container_pids}
        netns_inodes.add(os.stat(state.layout.netns).st_ino)
        peak = node.memory_peak_bytes(state)
        anon = sum(_rss_anon_kib(pid) for pid in _pids_in_cgroup(state.names.cgroup + "/"))
        print(
            f"node up in {up_seconds:.1f}s; node cgroup peak memory {peak / 2**20:.0f} MiB; "
            f"anonymous RSS of its processes now {anon / 1024:.0f} MiB"
        )
        harness.kubectl(env, "delete", "namespace", namespace, "--wait=false")
    finally:
        started = time.monotonic()
        removed = node.down()
        print(f"node down in {time.monotonic() - started:.1f}s: removed {len(removed)} things")

    assert node.leftovers(state) == []
    # containerd's shims are orphans of PID 1 once containerd is gone; here PID 1
    # reaps them a moment after they exit, so a killed one may linger as a zombie.
    with contextlib.suppress(AssertionError):  # the assertions below say what is left
        wait_for(
            lambda: not _pids_in_cgroup(state.names.cgroup) and not _pids_in_netns(netns_inodes),
            ZOMBIE_REAPED_TIMEOUT_SECONDS,
            "no process left in the node's cgroup or network namespaces",
        )
    assert _describe(_pids_in_cgroup(state.names.cgroup)) == []
    assert _describe(_pids_in_netns(netns_inodes)) == []
    assert _changes(before, _snapshot()) == {}
    assert harness.kubectl(env, "get", "node", node_plan.NODE_NAME).returncode != 0
    assert not state.layout.netns.exists()


def test_a_failed_up_leaves_nothing(
    devstack: Stack, stack_state: StackState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet refuses its flags: `up` fails with its log and undoes the
    namespace, link, rule, cgroups and containerd it had already made."""
    before = _snapshot()
    real = node_plan.kubelet_command
    monkeypatch.setattr(
        node_plan, "kubelet_command", lambda *a: [*real(*a), "--no-such-flag-for-this-test"]
    )
    node = Node(devstack.state_dir)
    with pytest.raises(ComponentFailed, match=r"kubelet failed to start(.|\n)*no-such-flag"):
        node.up(stack_state, control_plane=False)
    assert node.state is None
    assert _changes(before, _snapshot()) == {}


OWNER_SCRIPT = """
import signal, sys
from pathlib import Path
from mailpipe.devstack.node import Node
from mailpipe.devstack.stack import StackState
stack_dir = Path(sys.argv[1])
Node(stack_dir).up(StackState.load(stack_dir), control_plane=False)
print("node up", flush=True)
signal.pause()
"""


def test_down_from_another_process_after_the_owner_was_killed(
    devstack: Stack, stack_state: StackState, unique: str, tmp_path: Path
) -> None:
    """`mailpipe dev down` runs in a new process: the node's record alone is
    enough to remove a node whose `up` process died with it running a pod."""
    env = {**os.environ, **stack_state.env()}
    before = _snapshot()
    owner = harness.start(
        "node owner",
        [sys.executable, "-c", OWNER_SCRIPT, str(devstack.state_dir)],
        tmp_path / "owner.log",
    )
    node = Node(devstack.state_dir)
    try:
        wait_for(
            lambda: "node up" in owner.log.read_text(),
            POD_RUNNING_TIMEOUT_SECONDS,
            "the node to come up in the owner process",
            owner,
        )
        state = node.state
        assert state is not None
        namespace = f"orphan-{unique}"
        harness.kubectl_ok(env, "create", "namespace", namespace)
        harness.kubectl_ok(env, "create", "serviceaccount", "default", "-n", namespace)
        harness.apply(env, _pod("bound", namespace, state.pause_image))
        wait_for(
            lambda: len(_running_pods(env, namespace)) == 1,
            POD_RUNNING_TIMEOUT_SECONDS,
            "the bound pod Running",
        )
        owner.kill()
        assert all(procs.alive(p.pid) for p in state.processes.values())
    finally:
        owner.kill()
        node.down()
    assert node.leftovers(state) == []
    with contextlib.suppress(AssertionError):  # the assertion below says what is left
        wait_for(
            lambda: not _pids_in_cgroup(state.names.cgroup),
            ZOMBIE_REAPED_TIMEOUT_SECONDS,
            "no process left in the node's cgroup",
        )
    assert _describe(_pids_in_cgroup(state.names.cgroup)) == []
    assert _changes(before, _snapshot()) == {}


def _evaluated(exports: str) -> dict[str, str]:
    """The environment a shell has after `eval "$(mailpipe dev up)"`."""
    shell = subprocess.run(
        ["bash", "-c", 'eval "$EXPORTS"; unset EXPORTS; env -0'],
        env={**os.environ, "EXPORTS": exports},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=True,
    )
    return dict(item.split("=", 1) for item in shell.stdout.split("\0") if "=" in item)


def test_dev_up_with_a_node_and_dev_down_from_the_shell(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`mailpipe dev up --node` is a whole stack with its node; `mailpipe dev
    down` (the stack's down) removes the node with it."""
    state_dir = tmp_path_factory.mktemp("cli")  # short: unix socket paths live under it
    before = _snapshot()
    mailpipe = [str(harness.MAILPIPE), "dev"]
    up = subprocess.run(
        [*mailpipe, "up", "--node", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=CLI_UP_TIMEOUT_SECONDS,
        check=False,
    )
    node = Node(state_dir)
    state = node.state
    try:
        assert up.returncode == 0, up.stderr
        assert state is not None and state.complete
        env = _evaluated(up.stdout)
        assert harness.condition_true(harness.get_json(env, "node", node_plan.NODE_NAME))
        # Pods get Kafka at the Service its pods listener advertises.
        assert f"pods reach Kafka at {kube.KAFKA_SERVICE_IP}:" in up.stderr, up.stderr
        service = harness.get_json(env, "service", node_plan.KAFKA_SERVICE, "-n", "default")
        assert service["spec"]["clusterIP"] == kube.KAFKA_SERVICE_IP
        status = subprocess.run(
            [*mailpipe, "status", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            check=False,
        )
        assert status.returncode == 0, status.stdout
        assert "node kubelet: running" in status.stdout
    finally:
        down = subprocess.run(
            [*mailpipe, "down", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            check=False,
        )
    assert down.returncode == 0 and "stopped: node, " in down.stdout, down.stdout + down.stderr
    assert node.leftovers(state) == []
    with contextlib.suppress(AssertionError):  # the assertion below says what is left
        wait_for(
            lambda: not _pids_in_cgroup(state.names.cgroup),
            ZOMBIE_REAPED_TIMEOUT_SECONDS,
            "no process left in the node's cgroup",
        )
    assert _describe(_pids_in_cgroup(state.names.cgroup)) == []
    assert _changes(before, _snapshot()) == {}


def test_a_failing_down_step_does_not_stop_the_others_and_down_again_finishes(
    devstack: Stack, stack_state: StackState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One mount that will not go: `down` still removes the rest, says which
    step failed, keeps the record; the next `down` removes what was left."""
    before = _snapshot()
    node = Node(devstack.state_dir)
    state = node.up(stack_state, control_plane=False)
    stuck = state.layout.kubelet_root
    real_umount = Node._umount

    def umount(point: Path) -> None:
        if point == stuck:
            raise NodeError(f"unmount {point}: busy (this test)")
        real_umount(point)

    monkeypatch.setattr(Node, "_umount", staticmethod(umount))
    with pytest.raises(NodeError, match=r"unmount under the node's directory: unmount .*busy"):
        node.down()
    assert node.state is not None  # kept for the next down
    left = node.leftovers(state)
    assert left == [f"mount {stuck}"], left  # the link, rule, cgroups, processes: gone
    monkeypatch.undo()
    node.down()
    assert node.leftovers(state) == []
    assert _changes(before, _snapshot()) == {}
