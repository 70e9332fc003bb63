"""The stack's Kubernetes node: a network namespace with containerd and a kubelet.

`Node.up` builds what `node_plan` lays out, against a running `Stack`; every
thing it creates is written to `node.json` before the next step, so `down`
removes exactly what exists even after a failed or interrupted `up`, in
reverse order: processes (and what they started, found by cgroup), mounts,
cgroups, the iptables rule, the veth pair, the namespace. `leftovers` lists
what of a node still exists; the tests assert it is empty after `down`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import certs, harness, kube, node_plan, oci, paths, procs
from .node_plan import Layout, Link, Names
from .procs import ComponentFailed

if TYPE_CHECKING:
    from .stack import StackState

STATE_FILE = "node.json"
NODE_DIR = "node"  # under the stack's state directory
LOCK_FILE = "mailpipe-node-link.lock"  # host-wide: serialises picking a free /30
COMMAND_TIMEOUT_SECONDS = 60.0  # ip, iptables, ctr import of a 1.5 MB image, loaded machine
IMAGE_IMPORT_TIMEOUT_SECONDS = 300.0  # mailpipe's ~80 MB archive unpacked, loaded machine
CONTAINERD_START_TIMEOUT_SECONDS = 60
NODE_READY_TIMEOUT_SECONDS = 180  # kubelet start + first status sync on a loaded 2-core machine
CONTROL_PLANE_START_TIMEOUT_SECONDS = 120
HEALTHZ_TIMEOUT_SECONDS = 3
DEREGISTER_TIMEOUT_SECONDS = 15.0  # one DELETE; the API server answers in milliseconds
PROCESS_STOP_GRACE_SECONDS = 15.0  # kubelet and containerd stop within a few seconds
CGROUP_EMPTY_TIMEOUT_SECONDS = 10.0  # SIGKILLed processes leave their cgroup once reaped
UMOUNT_ATTEMPTS = 3
PAUSE_TAG_LENGTH = 12  # hex digits of the binary's sha256: a new build, a new tag
# Start order; `down` stops in the reverse.
PROCESS_ORDER = [
    "containerd",
    "kubelet",
    "kube-proxy",
    "kube-scheduler",
    "kube-controller-manager",
]
KUBE_PROXY_READY_TIMEOUT_SECONDS = 60  # first sync of Services into iptables
LOG_SYMLINK_DIR = Path("/var/log/containers")  # the kubelet's legacy links, not configurable
# Host paths the kubelet and containerd 1.6 use whatever they are told: the
# device plugin directory, the legacy log links, the shims' socket directory.
# `up` records those that did not exist; `down` removes those (the first one
# with its content, a socket and a checkpoint; the others only when empty).
# libcni caches each pod's CNI result here; containerd 1.6 cannot move it.
CNI_RESULTS_DIR = Path("/var/lib/cni/results")
HOST_DIRS_OWNED = (Path("/var/lib/kubelet"), CNI_RESULTS_DIR.parent)
HOST_DIRS = (
    *HOST_DIRS_OWNED,
    CNI_RESULTS_DIR,
    LOG_SYMLINK_DIR,
    Path("/run/containerd"),
    Path("/run/containerd/s"),
)


class NodeError(RuntimeError):
    """A step of bringing the node up failed; the message says which and why."""


@dataclass
class NodeProcess:
    pid: int
    log: str
    command: list[str] = field(default_factory=list)


@dataclass
class NodeState:
    """What `up` created, recorded before each next step (`down` reads it)."""

    node_id: str
    root: str
    link: str = ""  # the /30, once its addresses are assigned
    netns: bool = False  # the namespace file is mounted
    veth: bool = False
    # Each host DNAT rule's spec, recorded before it is added: the API server's
    # first, then what `expose` added.
    dnat: list[list[str]] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # directories created, in order
    processes: dict[str, NodeProcess] = field(default_factory=dict)
    pause_image: str = ""
    kubeconfig: str = ""  # the stack's admin kubeconfig: `down` deregisters the node
    endpoints: bool = False  # the `kubernetes` Service's endpoints were written
    kafka_service: bool = False  # `expose_kafka` created the Kafka Service
    # Egress addresses on the node end of the link (node_plan.egress_commands),
    # recorded before they are added; they go with the namespace, their host
    # route with the veth.
    egress: list[str] = field(default_factory=list)
    host_dirs: list[str] = field(default_factory=list)  # created outside the root, see HOST_DIRS
    complete: bool = False  # `up` finished: every process started and ready
    started_at: float = 0.0

    @property
    def names(self) -> Names:
        return Names(self.node_id)

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.root))

    def save(self) -> None:
        path = Path(self.root) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, root: Path) -> NodeState | None:
        path = root / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        processes = {k: NodeProcess(**v) for k, v in data.pop("processes").items()}
        return cls(processes=processes, **data)


def _run(argv: list[str], what: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise NodeError(f"{what}: `{' '.join(argv)}` failed: {out.stderr.strip()}")
    return out.stdout


def _mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _host_ipv4_addresses() -> list[str]:
    out = _run(["ip", "-4", "-o", "addr", "show"], "list host addresses")
    return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]


@contextlib.contextmanager
def _link_lock() -> Iterator[None]:
    lock = paths.cache_dir() / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cgroup_procs(directory: Path) -> list[int]:
    try:
        text = (directory / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


def _tree_pids(hierarchies: list[Path], cgroup: str) -> set[int]:
    """Every pid in `cgroup` or below it, in any hierarchy."""
    pids: set[int] = set()
    for top in node_plan.cgroup_dirs(hierarchies, cgroup):
        if top.is_dir():
            for directory, _, _ in os.walk(top):
                pids.update(_cgroup_procs(Path(directory)))
    return pids


def _init_cpuset(directory: Path) -> None:
    """A new v1 cpuset cgroup has no CPUs and no memory nodes: no task may join it
    until it inherits its parent's (runc does the same for a container's)."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        own = directory / name
        if own.exists() and not own.read_text().strip():
            own.write_text((directory.parent / name).read_text())


def _healthz(url: str) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the component's self-signed serving certificate
    with urllib.request.urlopen(url, context=ctx, timeout=HEALTHZ_TIMEOUT_SECONDS) as resp:
        status: int = resp.status
        return status == 200


class Node:
    """Handle on the node of one stack (its state under `<stack dir>/node`)."""

    def __init__(self, stack_dir: Path) -> None:
        self.stack_dir = stack_dir.resolve()
        self.root = self.stack_dir / NODE_DIR

    @property
    def state(self) -> NodeState | None:
        return NodeState.load(self.root)

    # -- up ---------------------------------------------------------------------------

    def up(self, stack: StackState, control_plane: bool = True) -> NodeState:
        """Bring the node up against the running `stack`; on any failure undo and
        re-raise.

        `control_plane`: also kube-scheduler and kube-controller-manager, so
        Deployments get pods; without them a pod needs `nodeName` set."""
        if not stack.kube_server:
            raise NodeError(f"no API server in {stack.state_dir}: run `mailpipe dev up` first")
        existing = self.state
        if (
            existing is not None
            and existing.complete
            and all(procs.alive(p.pid) for p in existing.processes.values())
        ):
            return existing  # `dev up --node` twice: the running node stays
        if existing is not None:
            self.down()
        layout = Layout(self.root)
        layout.check()
        self.root.mkdir(parents=True, exist_ok=True)
        state = NodeState(node_id=secrets.token_hex(3), root=str(self.root), started_at=time.time())
        state.host_dirs = [str(d) for d in HOST_DIRS if not d.exists()]
        state.kubeconfig = stack.kubeconfig
        state.save()
        try:
            self._network(state, stack.kube_server)
            self._cgroups(state)
            self._configs(state, stack)
            self._containerd(state)
            self._kubelet(state, {**os.environ, **stack.env()})
            self._kube_proxy(state, stack)
            if control_plane:
                self._control_plane(state, stack)
        except BaseException:
            state.save()
            self.down()
            raise
        state.complete = True
        state.save()
        return state

    def _network(self, state: NodeState, kube_server: str) -> None:
        layout, names = state.layout, state.names
        layout.netns.touch()
        _run(["unshare", f"--net={layout.netns}", "true"], "create the node's network namespace")
        state.netns = True
        state.save()
        with _link_lock():
            link = node_plan.pick_link(_host_ipv4_addresses())
            state.link = str(link.network)
            state.veth = True  # recorded first: a half-made pair is still removed
            state.save()
            for argv in node_plan.link_commands(layout, link, names):
                _run(argv, "link the node to the host")
            state.egress = node_plan.egress_addresses(link)
            state.save()
            for argv in node_plan.egress_commands(
                layout, link, names, state.egress, kube.SERVICE_CIDR
            ):
                _run(argv, "put the egress addresses on the node")
        # on the host end alone; it goes with the interface, so `down` has nothing to undo
        node_plan.route_localnet_path(names).write_text("1")
        port = int(kube_server.rsplit(":", 1)[1])
        self._add_dnat(state, node_plan.loopback_dnat(link, names, port), "the API server")

    @staticmethod
    def _add_dnat(state: NodeState, rule: node_plan.Rule, what: str) -> None:
        state.dnat.append(list(rule.spec))
        state.save()
        _run(rule.add(), f"route the node's connections to {what} to loopback")

    def expose(self, port: int, protocol: str = "tcp") -> str:
        """Let the node and its pods reach a server of the stack listening on
        127.0.0.1:`port`, at the host end of the link; returns that host:port.

        Only for servers that answer with nothing naming 127.0.0.1 (an SMTP or
        DNS server; not Kafka, whose metadata names its advertised listener)."""
        state = self.state
        if state is None or not state.complete:
            raise NodeError(f"no node running in {self.root}: run `mailpipe dev up --node`")
        link = Link(_network(state.link))
        rule = node_plan.loopback_dnat(link, state.names, port, protocol)
        if list(rule.spec) not in state.dnat:
            self._add_dnat(state, rule, f"{protocol} port {port}")
        return f"{link.host_ip}:{port}"

    def expose_kafka(self, stack: StackState) -> str:
        """Let pods reach the stack's Kafka; returns their bootstrap address.

        Not `expose` alone: a Kafka client connects next to whatever the
        broker's metadata names, so the broker has a listener for pods
        (kafka.pods_listener_properties) that advertises a fixed ClusterIP; this
        makes that Service, its endpoint the host end of the link, and the DNAT
        rule from there to the listener on loopback."""
        state = self.state
        if state is None or not state.complete:
            raise NodeError(f"no node running in {self.root}: run `mailpipe dev up --node`")
        if not stack.kafka_pods_bootstrap:
            raise NodeError(
                f"the stack in {stack.state_dir} has no Kafka listener for pods: "
                "restart it with this version (`mailpipe dev down`, `mailpipe dev up --node`)"
            )
        service_ip, port = stack.kafka_pods_bootstrap.rsplit(":", 1)
        self.expose(int(port))
        link = Link(_network(state.link))
        state = self.state
        assert state is not None  # `expose` saved it
        state.kafka_service = True
        state.save()
        env = {**os.environ, **stack.env()}
        manifest = node_plan.kafka_service(link, service_ip, int(port))
        harness.apply(env, {"apiVersion": "v1", "kind": "List", "items": manifest})
        return stack.kafka_pods_bootstrap

    def _cgroups(self, state: NodeState) -> None:
        names = state.names
        hierarchies = node_plan.cgroup_hierarchies(_mountinfo())
        for path in (names.cgroup, names.daemons_cgroup, names.pods_cgroup):
            state.cgroups.append(path)
            state.save()
            for directory in node_plan.cgroup_dirs(hierarchies, path):
                directory.mkdir(exist_ok=True)
                _init_cpuset(directory)

    def _configs(self, state: NodeState, stack: StackState) -> None:
        layout, names = state.layout, state.names
        link = Link(_network(state.link))
        for directory in (layout.cni_conf_dir, layout.cni_ipam_dir, layout.pod_logs, layout.logs):
            directory.mkdir(parents=True, exist_ok=True)
        pki = certs.pki_in(_pki_dir(stack))
        pause = paths.binary("pause").read_bytes()
        tag = hashlib.sha256(pause).hexdigest()[:PAUSE_TAG_LENGTH]
        state.pause_image = f"{node_plan.PAUSE_IMAGE_REPOSITORY}:{tag}"
        layout.containerd_config.write_text(node_plan.containerd_config(layout, state.pause_image))
        (layout.cni_conf_dir / "10-mailpipe.conflist").write_text(
            json.dumps(node_plan.cni_conflist(layout), indent=2)
        )
        layout.kubelet_config.write_text(
            yaml.safe_dump(node_plan.kubelet_config(layout, link, names, pki.ca_cert))
        )
        cert, key = layout.pki / "kubelet-client.crt", layout.pki / "kubelet-client.key"
        certs.issue_client_cert(
            pki, f"system:node:{node_plan.NODE_NAME}", "system:nodes", cert, key
        )
        port = stack.kube_server.rsplit(":", 1)[1]
        layout.kubelet_kubeconfig.write_text(
            yaml.safe_dump(
                node_plan.kubeconfig(
                    f"https://{link.host_ip}:{port}", pki.ca_cert, cert, key, "localhost"
                )
            )
        )
        archive = oci.build_archive(
            state.pause_image,
            [oci.ImageFile("pause", pause)],
            oci.ImageConfig(entrypoint=["/pause"], user=node_plan.PAUSE_USER),
        )
        layout.pause_archive.write_bytes(archive.data)

    def _spawn(self, state: NodeState, name: str, argv: list[str]) -> int:
        """Start a node process inside the node's daemons cgroup (it joins before
        it execs, so everything it starts — containerd's shims — is found there)."""
        hierarchies = node_plan.cgroup_dirs(
            node_plan.cgroup_hierarchies(_mountinfo()), state.names.daemons_cgroup
        )
        procs_files = " ".join(str(d / "cgroup.procs") for d in hierarchies)
        wrapper = 'for f in $MAILPIPE_CGROUP_PROCS; do echo $$ > "$f"; done; exec "$@"'
        log = state.layout.logs / f"{name}.log"
        command = ["sh", "-c", wrapper, "sh", *argv]
        pid = procs.spawn(command, log, env={"MAILPIPE_CGROUP_PROCS": procs_files})
        state.processes[name] = NodeProcess(pid, str(log), command)
        state.save()
        return pid

    def _wait(self, state: NodeState, name: str, probe: Callable[[], bool], timeout: float) -> None:
        proc = state.processes[name]
        try:
            harness.wait_for(
                probe,
                timeout,
                f"{name} to be ready",
                watch=[harness.Child(name, proc.pid, Path(proc.log))],
                retry_on=(Exception,),
            )
        except harness.ChildExited as exc:
            raise ComponentFailed(name, f"process {proc.pid} exited", Path(proc.log)) from exc
        except harness.TimedOut as exc:
            raise ComponentFailed(name, f"not ready after {timeout:.0f}s", Path(proc.log)) from exc

    def ctr(self, state: NodeState, *args: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
        """`ctr` against the node's containerd, in the namespace the CRI uses."""
        sock = str(state.layout.containerd_socket)
        argv = ["ctr", f"--address={sock}", "-n", "k8s.io", *args]
        return _run(argv, f"ctr {args[0]}", timeout)

    def import_image(self, archive: Path) -> list[str]:
        """Import an OCI image archive (`make image`'s) into the node's containerd,
        where the kubelet finds it: the node reaches no registry, so pods name
        it with `imagePullPolicy` IfNotPresent or Never. Returns its names.

        The images live in containerd's root under the node's directory, so
        they go with the node."""
        state = self.state
        if state is None or not state.complete:
            raise NodeError(f"no node running in {self.root}: run `mailpipe dev up --node`")
        try:
            names = oci.archive_references(archive)
        except (OSError, tarfile.TarError, ValueError) as exc:
            raise NodeError(f"cannot read image archive {archive}: {exc}") from exc
        if not names:
            raise NodeError(f"image archive {archive} names no image (no ref.name annotation)")
        self.ctr(state, "images", "import", str(archive), timeout=IMAGE_IMPORT_TIMEOUT_SECONDS)
        listed = set(self.ctr(state, "images", "ls", "--quiet").split())
        missing = [name for name in names if name not in listed]
        if missing:
            raise NodeError(f"containerd did not list {missing} after importing {archive}")
        return names

    def _containerd(self, state: NodeState) -> None:
        layout = state.layout
        argv = node_plan.containerd_command(paths.system_binary("containerd"), layout)
        self._spawn(state, "containerd", node_plan.in_netns(layout, argv))
        self._wait(
            state,
            "containerd",
            lambda: bool(self.ctr(state, "version")),
            CONTAINERD_START_TIMEOUT_SECONDS,
        )
        self.ctr(state, "images", "import", str(layout.pause_archive))

    def _kubelet(self, state: NodeState, env: dict[str, str]) -> None:
        layout = state.layout
        link = Link(_network(state.link))
        labels = node_plan.egress_node_labels(state.egress)
        argv = node_plan.kubelet_command(paths.binary("kubelet"), layout, link, labels)
        self._spawn(state, "kubelet", node_plan.in_netns(layout, argv))

        def ready() -> bool:
            got = harness.kubectl(env, "get", "node", node_plan.NODE_NAME, "-o", "json")
            return got.returncode == 0 and harness.condition_true(json.loads(got.stdout))

        self._wait(state, "kubelet", ready, NODE_READY_TIMEOUT_SECONDS)

    def _kube_proxy(self, state: NodeState, stack: StackState) -> None:
        """kube-proxy in the node's namespace, and the `kubernetes` Service's
        endpoints at the host end of the link: in-cluster config then reaches
        the API server from a pod, as on any cluster."""
        layout = state.layout
        link = Link(_network(state.link))
        port = int(stack.kube_server.rsplit(":", 1)[1])
        pki = certs.pki_in(_pki_dir(stack))
        cert, key = layout.pki / "kube-proxy.crt", layout.pki / "kube-proxy.key"
        # The built-in `system:node-proxier` binding names this user.
        certs.issue_client_cert(pki, "system:kube-proxy", "", cert, key)
        layout.kube_proxy_kubeconfig.write_text(
            yaml.safe_dump(
                node_plan.kubeconfig(
                    f"https://{link.host_ip}:{port}", pki.ca_cert, cert, key, "localhost"
                )
            )
        )
        layout.kube_proxy_config.write_text(yaml.safe_dump(node_plan.kube_proxy_config(layout)))
        env = {**os.environ, **stack.env()}
        state.endpoints = True
        state.save()
        harness.apply(
            env,
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": node_plan.kubernetes_endpoints(link, port),
            },
        )
        argv = node_plan.kube_proxy_command(paths.binary("kube-proxy"), layout)
        self._spawn(state, "kube-proxy", node_plan.in_netns(layout, argv))

        def kubernetes_service_programmed() -> bool:
            rules = _run(
                node_plan.in_netns(layout, ["iptables", "-w", "-t", "nat", "-S"]),
                "list the node's iptables rules",
            )
            return "default/kubernetes:https" in rules and "KUBE-SEP-" in rules

        self._wait(
            state, "kube-proxy", kubernetes_service_programmed, KUBE_PROXY_READY_TIMEOUT_SECONDS
        )

    def _control_plane(self, state: NodeState, stack: StackState) -> None:
        kubeconfig = Path(stack.kubeconfig)
        pki = certs.pki_in(_pki_dir(stack))
        sched_port, kcm_port = procs.free_port(), procs.free_port()
        self._spawn(
            state,
            "kube-scheduler",
            node_plan.scheduler_command(paths.binary("kube-scheduler"), kubeconfig, sched_port),
        )
        self._spawn(
            state,
            "kube-controller-manager",
            node_plan.controller_manager_command(
                paths.binary("kube-controller-manager"),
                kubeconfig,
                kcm_port,
                pki.ca_cert,
                pki.sa_key,
                state.layout,
            ),
        )
        for name, port in (("kube-scheduler", sched_port), ("kube-controller-manager", kcm_port)):
            probe = functools.partial(_healthz, f"https://127.0.0.1:{port}/healthz")
            self._wait(state, name, probe, CONTROL_PLANE_START_TIMEOUT_SECONDS)

    # -- down ---------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything the recorded `up` created, in reverse order; returns
        what was removed. Safe to call twice and after a partial `up`.

        A step that fails does not stop the steps after it; NodeError then
        names every failure, and the record stays so the next `down` retries."""
        state = self.state
        if state is None:
            return []
        removed: list[str] = []
        errors: list[str] = []
        steps: list[tuple[str, Callable[[], list[str]]]] = [
            ("stop the node's processes", lambda: self._stop_processes(state)),
            ("deregister the node", lambda: self._deregister_step(state)),
            ("empty the node's cgroup", lambda: self._kill_step(state)),
            ("unmount under the node's directory", lambda: self._unmount_step(state)),
            ("remove the node's cgroups", lambda: self._cgroups_step(state)),
            ("remove the DNAT rules", lambda: self._dnat_step(state)),
            ("remove the veth pair", lambda: self._veth_step(state)),
            ("remove the network namespace", lambda: self._netns_step(state)),
            ("remove the kubelet's log links", lambda: self._remove_log_symlinks(state.layout)),
            ("remove CNI results", lambda: self._remove_cni_results(state.layout)),
            ("remove host directories", lambda: self._host_dirs_step(state)),
        ]
        for what, step in steps:
            try:
                removed += step()
            except (NodeError, OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{what}: {exc}")
        if errors:
            raise NodeError(
                f"node {state.node_id} not fully removed (run `mailpipe dev down` again): "
                + "; ".join(errors)
            )
        (self.root / STATE_FILE).unlink(missing_ok=True)
        return removed

    def _stop_processes(self, state: NodeState) -> list[str]:
        """Ours by pid, in reverse start order, containerd last; the containers go
        through containerd first, so their shims exit and remove their sockets."""
        removed = []
        for name in reversed(PROCESS_ORDER):
            proc = state.processes.get(name)
            if name == "containerd" and proc is not None and procs.alive(proc.pid):
                removed += self._remove_containers(state)
            if proc is not None and procs.alive(proc.pid):
                procs.stop(proc.pid, PROCESS_STOP_GRACE_SECONDS)
                removed.append(f"process {name} ({proc.pid})")
        return removed

    def _deregister_step(self, state: NodeState) -> list[str]:
        # After the kubelet stopped: it would register the node again.
        if "kubelet" in state.processes and self._deregister(state):
            return [f"node {node_plan.NODE_NAME}"]
        return []

    def _kill_step(self, state: NodeState) -> list[str]:
        if not state.cgroups:
            return []
        hierarchies = node_plan.cgroup_hierarchies(_mountinfo())
        return self._kill_cgroup_tree(hierarchies, state.names.cgroup)

    def _unmount_step(self, state: NodeState) -> list[str]:
        """Container root filesystems, pod network namespaces, kubelet volumes."""
        removed = []
        for point in node_plan.mounts_under(_mountinfo(), self.root):
            if point == state.layout.netns:
                continue  # the node's namespace goes last
            self._umount(point)
            removed.append(f"mount {point}")
        return removed

    def _cgroups_step(self, state: NodeState) -> list[str]:
        hierarchies = node_plan.cgroup_hierarchies(_mountinfo())
        removed = []
        for path in reversed(state.cgroups):
            removed += self._remove_cgroup(hierarchies, path)
        return removed

    def _dnat_step(self, state: NodeState) -> list[str]:
        removed = []
        for spec in reversed(state.dnat):
            rule = node_plan.Rule("nat", "PREROUTING", tuple(spec))
            if subprocess.run(rule.check(), capture_output=True, check=False).returncode != 0:
                continue  # never added, or already gone
            _run(rule.delete(), "remove a DNAT rule")
            port = spec[spec.index("--dport") + 1]
            removed.append(f"iptables nat PREROUTING rule to port {port}")
        return removed

    def _veth_step(self, state: NodeState) -> list[str]:
        veth = state.names.host_veth
        if not state.veth or not Path("/sys/class/net", veth).exists():
            return []
        _run(["ip", "link", "del", veth], "remove the node's veth pair")
        return [f"veth {veth}"]

    def _netns_step(self, state: NodeState) -> list[str]:
        netns = state.layout.netns
        removed = []
        if state.netns and netns in node_plan.mounts_under(_mountinfo(), netns):
            self._umount(netns)
            removed.append(f"network namespace {netns}")
        netns.unlink(missing_ok=True)
        return removed

    @staticmethod
    def _host_dirs_step(state: NodeState) -> list[str]:
        removed = []
        for directory in reversed(state.host_dirs):
            host_dir = Path(directory)
            if not host_dir.is_dir():
                continue
            # Created by this node's kubelet or containerd at a path they do not
            # let us choose; removed only when this `up` created it.
            if host_dir in HOST_DIRS_OWNED:
                shutil.rmtree(host_dir)
            else:
                with contextlib.suppress(OSError):  # not empty: someone else's too
                    host_dir.rmdir()
            if not host_dir.exists():
                removed.append(f"directory {host_dir}")
        return removed

    @staticmethod
    def _deregister(state: NodeState) -> bool:
        """Delete the Node object, so the API server does not keep a NotReady node
        with its pods bound to it, and the `kubernetes` endpoints that lead to the
        link. Best effort: the API server may be gone."""
        if not state.kubeconfig or not Path(state.kubeconfig).exists():
            return False
        env = {
            **os.environ,
            "KUBECONFIG": state.kubeconfig,
            # The stack's discovery cache (see StackState.env), not ~/.kube's.
            "KUBECACHEDIR": str(Path(state.kubeconfig).parent / "kubecache"),
        }
        if state.kafka_service:
            with contextlib.suppress(subprocess.TimeoutExpired):
                harness.kubectl(
                    env,
                    "delete",
                    "-n",
                    "default",
                    f"service/{node_plan.KAFKA_SERVICE}",
                    f"endpoints/{node_plan.KAFKA_SERVICE}",
                    f"endpointslices.discovery.k8s.io/{node_plan.KAFKA_SERVICE}",
                    "--ignore-not-found",
                    "--wait=false",
                    timeout_seconds=DEREGISTER_TIMEOUT_SECONDS,
                )
        if state.endpoints:
            with contextlib.suppress(subprocess.TimeoutExpired):
                harness.kubectl(
                    env,
                    "delete",
                    "-n",
                    "default",
                    "endpoints/kubernetes",
                    "endpointslices.discovery.k8s.io/kubernetes",
                    "--ignore-not-found",
                    "--wait=false",
                    timeout_seconds=DEREGISTER_TIMEOUT_SECONDS,
                )
        with contextlib.suppress(subprocess.TimeoutExpired):
            got = harness.kubectl(
                env,
                "delete",
                "node",
                node_plan.NODE_NAME,
                "--ignore-not-found",
                "--wait=false",
                timeout_seconds=DEREGISTER_TIMEOUT_SECONDS,
            )
            return got.returncode == 0 and bool(got.stdout.strip())
        return False

    def memory_peak_bytes(self, state: NodeState) -> int:
        """The most memory the node's cgroup has held since `up` (v1's
        max_usage_in_bytes: every node process and pod, page cache included)."""
        for directory in node_plan.cgroup_dirs(
            node_plan.cgroup_hierarchies(_mountinfo()), state.names.cgroup
        ):
            peak = directory / "memory.max_usage_in_bytes"
            if peak.exists():
                return int(peak.read_text())
        raise NodeError("no v1 memory cgroup for the node: cannot tell its peak memory")

    def _remove_containers(self, state: NodeState) -> list[str]:
        """Kill and delete every container through containerd (pod sandboxes too)."""
        removed = []
        try:
            ids = self.ctr(state, "containers", "list", "--quiet").split()
        except NodeError:
            return []
        for cid in ids:
            for argv in (
                ("tasks", "kill", "--signal", "SIGKILL", cid),
                ("tasks", "delete", "--force", cid),
                ("containers", "delete", cid),
            ):
                with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
                    self.ctr(state, *argv)
            removed.append(f"container {cid[:12]}")
        return removed

    def _kill_cgroup_tree(self, hierarchies: list[Path], cgroup: str) -> list[str]:
        """SIGKILL what is left in the node's cgroup: only the node's processes
        (containers, shims) are there, because only they were put there."""
        killed = sorted(_tree_pids(hierarchies, cgroup))
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in killed:
            procs.wait_gone(pid, CGROUP_EMPTY_TIMEOUT_SECONDS)
        return [f"process {pid} (in {cgroup})" for pid in killed]

    @staticmethod
    def _umount(point: Path) -> None:
        for _ in range(UMOUNT_ATTEMPTS):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode == 0:
                return
        # Still busy: detach it now, the kernel frees it when the last user goes.
        _run(["umount", "--lazy", str(point)], f"unmount {point}")

    @staticmethod
    def _remove_cgroup(hierarchies: list[Path], path: str) -> list[str]:
        removed = []
        for top in node_plan.cgroup_dirs(hierarchies, path):
            if not top.is_dir():
                continue
            # Children first (the containers' cgroups runc made under ours).
            for directory, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(FileNotFoundError):
                    Path(directory).rmdir()
            removed.append(f"cgroup {top}")
        return removed

    @staticmethod
    def _remove_cni_results(layout: Layout) -> list[str]:
        """The CNI result files of this node's pods: a CNI DEL removes them, but
        `down` kills pods without one (the namespace they lived in goes anyway)."""
        removed = []
        for result in _cni_results(layout):
            result.unlink(missing_ok=True)
            removed.append(f"CNI result {result}")
        return removed

    @staticmethod
    def _remove_log_symlinks(layout: Layout) -> list[str]:
        removed = []
        if LOG_SYMLINK_DIR.is_dir():
            for link in LOG_SYMLINK_DIR.iterdir():
                if link.is_symlink() and os.readlink(link).startswith(str(layout.pod_logs)):
                    link.unlink()
                    removed.append(f"symlink {link}")
        return removed

    # -- what is left ----------------------------------------------------------------

    def leftovers(self, state: NodeState) -> list[str]:
        """What of the node `state` describes still exists on this machine (empty
        after a clean `down`): processes, mounts, cgroups, rules, links, namespace."""
        left: list[str] = []
        names, layout = state.names, state.layout
        for name, proc in state.processes.items():
            if procs.alive(proc.pid):
                left.append(f"process {name} ({proc.pid})")
        hierarchies = node_plan.cgroup_hierarchies(_mountinfo())
        left += [
            f"process {pid} in {names.cgroup}" for pid in _tree_pids(hierarchies, names.cgroup)
        ]
        left += [
            f"cgroup {d}" for d in node_plan.cgroup_dirs(hierarchies, names.cgroup) if d.exists()
        ]
        left += [f"mount {p}" for p in node_plan.mounts_under(_mountinfo(), self.root)]
        rules = _run(["iptables-save"], "list iptables rules")
        left += [f"iptables {r}" for r in rules.splitlines() if names.iptables_comment in r]
        if Path("/sys/class/net", names.host_veth).exists():
            left.append(f"veth {names.host_veth}")
        if state.link:
            block = str(node_plan.egress_block(Link(_network(state.link))))
            routes = _run(["ip", "-4", "route", "show"], "list host routes")
            left += [f"route {r}" for r in routes.splitlines() if r.startswith(f"{block} ")]
        left += [f"directory {d}" for d in state.host_dirs if Path(d).exists()]
        left += [f"CNI result {r}" for r in _cni_results(layout)]
        if LOG_SYMLINK_DIR.is_dir():
            left += [
                f"symlink {p}"
                for p in LOG_SYMLINK_DIR.iterdir()
                if p.is_symlink() and os.readlink(p).startswith(str(layout.pod_logs))
            ]
        return left


def _cni_results(layout: Layout) -> list[Path]:
    """libcni's cached results for this node's pod sandboxes (named by sandbox id)."""
    sandboxes = layout.containerd_root / "io.containerd.grpc.v1.cri" / "sandboxes"
    ids = [d.name for d in sandboxes.iterdir()] if sandboxes.is_dir() else []
    if not ids or not CNI_RESULTS_DIR.is_dir():
        return []
    return [r for r in CNI_RESULTS_DIR.iterdir() if any(i in r.name for i in ids)]


def _network(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr)


def _pki_dir(stack: StackState) -> Path:
    return Path(stack.state_dir) / "kube" / "pki"  # where `Stack` generates it
