"""What the stack's Kubernetes node is made of, as data: no process, no syscall.

`node` turns this plan into a network namespace, a veth link, an iptables rule,
cgroups and processes, and undoes them; everything it creates is named here,
so `down` and the leftover check in the tests look for exactly these names.

Why the node is shaped like this (measured on this machine kind):
- the kubelet refuses a loopback node IP, so the node lives in a network
  namespace of its own, joined to the host by a veth pair whose two ends hold
  the two addresses of a /30 that is used nowhere else;
- the API server listens on 127.0.0.1 only; one DNAT rule on the host side of
  the link (with `route_localnet` on that interface alone) carries the node's
  connections to it, so nothing listens beyond loopback and the link;
- cgroup v1 and a PID 1 that is not systemd: the kubelet uses the `cgroupfs`
  driver; every node process and pod lives under one cgroup of the node's
  own, which `down` empties and removes. Per-QoS cgroups stay on: with them
  off the kubelet gives containerd no cgroup parent and pods land in
  `/k8s.io/<id>` beside everything else; with them on, `cgroupRoot` puts the
  pods under the node's cgroup;
- containerd's CRI plugin must restrict oom_score_adj, or runc fails with
  "can't get final child's PID from pipe".
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailpipe.contracts.egress import egress_label

NODE_NAME = "mailpipe-node"
# A /16 of RFC 1918 space that neither the VM's own network nor the stack's
# Service range (10.0.0.0/16) uses; each node takes one /30 of it.
LINK_RANGE = ipaddress.IPv4Network("172.30.0.0/16")
LINK_PREFIX = 30  # two usable addresses: the host end and the node end
# Egress addresses (a SendingPool's egressIPs) live on the node end of the
# link, as a platform's egress IPs live on its nodes: the top /20 of the link
# range holds them, never a link, one /28 per node chosen by its link's index
# (two nodes on one machine never share one). The host routes each node's /28
# to it over the link, so replies to mail sent from them come back.
EGRESS_RANGE = ipaddress.IPv4Network("172.30.240.0/20")
EGRESS_BLOCK_PREFIX = 28
NODE_EGRESS_COUNT = 4  # addresses put on each node: pools of one or two IPs, a spare
# Pod addresses exist only inside the node's namespace (the bridge plugin
# masquerades pod traffic to the node address on its way out), so every node
# may use the same range.
POD_CIDR = "10.244.0.0/24"
BRIDGE_NAME = "cni0"
CNI_NETWORK = "mailpipe-pods"
NODE_IFNAME = "eth0"  # the node end of the link, renamed inside the namespace
# containerd refuses a longer socket path ("unix socket path too long (> 104)"),
# less than the 107 bytes sun_path would hold with its terminating NUL.
UNIX_SOCKET_PATH_MAX = 104
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248  # on the namespace's own loopback
KUBE_PROXY_HEALTHZ_PORT = 10256  # kube-proxy's defaults, on the namespace's loopback
KUBE_PROXY_METRICS_PORT = 10249
ENDPOINTS_MANAGER = "mailpipe-devstack"  # the EndpointSlice's managed-by label
PAUSE_IMAGE_REPOSITORY = "mailpipe.local/pause"
PAUSE_USER = "65535"  # the upstream pause image's user: nobody's, owns nothing
# No registry: an image garbage-collected from the node cannot be pulled back.
IMAGE_GC_HIGH_PERCENT = 100
IMAGE_GC_LOW_PERCENT = 99
# The controllers a node needs to run Deployments and ServiceAccounts;
# `-nodeipam`: pod addresses come from the CNI range above, not the node spec.
CONTROLLERS = "*,-nodeipam,-bootstrapsigner,-tokencleaner"


class PlanError(ValueError):
    """The node cannot be laid out as asked (no free link, a path too long)."""


@dataclass(frozen=True)
class Link:
    """The /30 between the host and the node's namespace."""

    network: ipaddress.IPv4Network

    @property
    def host_ip(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def node_ip(self) -> str:
        return str(self.network.network_address + 2)

    @property
    def prefix(self) -> int:
        return self.network.prefixlen


def pick_link(in_use: Iterable[str], link_range: ipaddress.IPv4Network = LINK_RANGE) -> Link:
    """The first /30 of `link_range` with no address already on a host interface.

    Two stacks on one machine (two clones, a test session beside `dev up`) each
    get their own; the caller holds a lock across picking and assigning."""
    used = {ipaddress.IPv4Address(a) for a in in_use}
    for net in link_range.subnets(new_prefix=LINK_PREFIX):
        if net.overlaps(EGRESS_RANGE):
            continue
        if not any(addr in net for addr in used):
            return Link(net)
    raise PlanError(f"no free /{LINK_PREFIX} left in {link_range}: remove stale nodes")


@dataclass(frozen=True)
class Names:
    """Host-wide names of what the node creates: all carry the node's id."""

    node_id: str

    @property
    def host_veth(self) -> str:
        return f"mph-{self.node_id}"  # IFNAMSIZ: 15 characters at most

    @property
    def node_veth(self) -> str:
        return f"mpn-{self.node_id}"

    @property
    def cgroup(self) -> str:
        """The node's cgroup, the same path in every hierarchy."""
        return f"/mailpipe-node-{self.node_id}"

    @property
    def daemons_cgroup(self) -> str:
        return f"{self.cgroup}/daemons"

    @property
    def pods_cgroup(self) -> str:
        return f"{self.cgroup}/pods"

    @property
    def iptables_comment(self) -> str:
        return f"mailpipe-node {self.node_id}"


@dataclass(frozen=True)
class Layout:
    """Where the node keeps its state: all of it under one directory of the stack's."""

    root: Path

    @property
    def netns(self) -> Path:
        return self.root / "netns"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.root / "containerd" / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy.yaml"

    @property
    def kube_proxy_kubeconfig(self) -> Path:
        return self.root / "kube-proxy.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pause_archive(self) -> Path:
        return self.root / "pause.tar"

    def check(self) -> None:
        """Refuse a root whose sockets would not fit a unix socket path."""
        longest = str(self.containerd_socket) + ".ttrpc"
        if len(longest) > UNIX_SOCKET_PATH_MAX:
            raise PlanError(
                f"node state directory {self.root} is too deep: {longest} is longer than "
                f"{UNIX_SOCKET_PATH_MAX} bytes (a unix socket path); use a shorter --state-dir"
            )


def in_netns(layout: Layout, argv: list[str]) -> list[str]:
    """`argv` run inside the node's network namespace, in the host's mount
    namespace: the kubelet's volume mounts must be the ones containerd sees."""
    return ["nsenter", f"--net={layout.netns}", "--", *argv]


def link_commands(layout: Layout, link: Link, names: Names) -> list[list[str]]:
    """Create the veth pair and address both ends.

    No default route: the node and its pods reach the host end of the link
    (where the API server, and later Kafka and the test hosts, answer) and
    nothing else, whatever the host's forwarding settings are.

    `ip link ... netns PATH`: iproute2 takes a path for a namespace not in /run/netns."""
    node = [
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "set", names.node_veth, "name", NODE_IFNAME],
        ["ip", "addr", "add", f"{link.node_ip}/{link.prefix}", "dev", NODE_IFNAME],
        ["ip", "link", "set", NODE_IFNAME, "up"],
    ]
    return [
        ["ip", "link", "add", names.host_veth, "type", "veth", "peer", "name", names.node_veth,
         "netns", str(layout.netns)],
        ["ip", "addr", "add", f"{link.host_ip}/{link.prefix}", "dev", names.host_veth],
        ["ip", "link", "set", names.host_veth, "up"],
        *(in_netns(layout, cmd) for cmd in node),
    ]  # fmt: skip


def egress_block(link: Link) -> ipaddress.IPv4Network:
    """The node's /28 of egress addresses, by its link's place in LINK_RANGE."""
    index = (int(link.network.network_address) - int(LINK_RANGE.network_address)) // (
        link.network.num_addresses
    )
    blocks = list(EGRESS_RANGE.subnets(new_prefix=EGRESS_BLOCK_PREFIX))
    if not 0 <= index < len(blocks):
        raise PlanError(f"no egress block for link {link.network}: only {len(blocks)} nodes")
    return blocks[index]


def egress_addresses(link: Link, count: int = NODE_EGRESS_COUNT) -> list[str]:
    """The egress addresses the stack puts on the node: the first `count` of its block."""
    return [str(a) for a in list(egress_block(link).hosts())[:count]]


def egress_commands(
    layout: Layout, link: Link, names: Names, addresses: Iterable[str], service_cidr: str
) -> list[list[str]]:
    """Put the egress addresses on the node end of the link, and route to them.

    In the node: each address as a /32 on its interface (as egress IPs sit on a
    node's NIC), and a route to the Service range over the link: a hostNetwork
    pod's connection to a ClusterIP (Kafka's) needs a route before kube-proxy's
    DNAT turns it into the link's host end; the host forwards nothing, so
    no other address of that range goes anywhere. On the host: the node's
    egress block routed over the link, so replies to those sources come back
    (the route goes with the veth)."""
    node = [["ip", "addr", "add", f"{a}/32", "dev", NODE_IFNAME] for a in addresses]
    node.append(["ip", "route", "add", service_cidr, "via", link.host_ip, "dev", NODE_IFNAME])
    host = [
        "ip", "route", "add", str(egress_block(link)), "via", link.node_ip, "dev", names.host_veth,
    ]  # fmt: skip
    return [*(in_netns(layout, cmd) for cmd in node), host]


def egress_node_labels(addresses: Iterable[str]) -> dict[str, str]:
    """The node labels saying which egress IPs the node holds (`contracts.egress`)."""
    return {egress_label(a): "true" for a in addresses}


def route_localnet_path(names: Names) -> Path:
    """The per-interface switch that lets a DNAT to 127.0.0.1 through (this link only)."""
    return Path("/proc/sys/net/ipv4/conf") / names.host_veth / "route_localnet"


@dataclass(frozen=True)
class Rule:
    """One host iptables rule: `iptables -t TABLE -A|-D CHAIN *spec`."""

    table: str
    chain: str
    spec: tuple[str, ...]

    def add(self) -> list[str]:
        return ["iptables", "-w", "-t", self.table, "-A", self.chain, *self.spec]

    def delete(self) -> list[str]:
        return ["iptables", "-w", "-t", self.table, "-D", self.chain, *self.spec]

    def check(self) -> list[str]:
        return ["iptables", "-w", "-t", self.table, "-C", self.chain, *self.spec]


def loopback_dnat(link: Link, names: Names, port: int, protocol: str = "tcp") -> Rule:
    """The node reaches host_ip:port; the host hands it to 127.0.0.1:port, where the
    stack's servers listen (the API server; the test hosts a test exposes)."""
    if protocol not in {"tcp", "udp"}:
        raise PlanError(f"cannot expose {protocol!r} port {port}: tcp or udp")
    return Rule(
        "nat",
        "PREROUTING",
        (
            "-i", names.host_veth, "-d", f"{link.host_ip}/32", "-p", protocol,
            "--dport", str(port),
            "-m", "comment", "--comment", names.iptables_comment,
            "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}",
        ),
    )  # fmt: skip


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON's string syntax
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for a flat mapping of table name -> keys (containerd's config needs no more)."""
    out: list[str] = []
    for table, keys in tables.items():
        if table:
            out.append(f"\n[{table}]")
        out.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
    return "\n".join(out).lstrip() + "\n"


def containerd_config(layout: Layout, sandbox_image: str) -> str:
    """containerd 1.6's config (version 2) for the node: every path under the layout."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    runc = f"{cri}.containerd.runtimes.runc"
    return to_toml(
        {
            "": {
                "version": 2,
                "root": str(layout.containerd_root),
                "state": str(layout.containerd_state),
                # `opt` installs into /opt/containerd; the rest need hardware or
                # filesystems this machine lacks and only log errors.
                "disabled_plugins": [
                    "io.containerd.internal.v1.opt",
                    "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs",
                ],
            },
            "grpc": {"address": str(layout.containerd_socket)},
            cri: {
                "sandbox_image": sandbox_image,
                "restrict_oom_score_adj": True,
                "netns_mounts_under_state_dir": True,
                "stream_server_address": "127.0.0.1",
                "enable_selinux": False,
            },
            f"{cri}.containerd": {"snapshotter": "overlayfs", "default_runtime_name": "runc"},
            runc: {"runtime_type": "io.containerd.runc.v2"},
            f"{runc}.options": {
                "SystemdCgroup": False,
                "BinaryName": "runc",
                "Root": str(layout.runc_root),
            },
            f"{cri}.cni": {
                "bin_dir": "/usr/lib/cni",
                "conf_dir": str(layout.cni_conf_dir),
                "max_conf_num": 1,
            },
        }
    )


def cni_conflist(layout: Layout, pod_cidr: str = POD_CIDR) -> dict[str, Any]:
    """A bridge inside the node's namespace; pod traffic leaves masqueraded as the node."""
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE_NAME,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(layout.cni_ipam_dir),
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(layout: Layout, link: Link, names: Names, client_ca: Path) -> dict[str, Any]:
    """KubeletConfiguration for this machine kind (see the module docstring)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": link.node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        "cgroupRoot": names.pods_cgroup,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "podLogsDir": str(layout.pod_logs),
        "volumePluginDir": str(layout.kubelet_root / "volume-plugins"),
        "resolvConf": "",
        "clusterDomain": "cluster.local",
        "imageGCHighThresholdPercent": IMAGE_GC_HIGH_PERCENT,
        "imageGCLowThresholdPercent": IMAGE_GC_LOW_PERCENT,
        # Only holders of a certificate from the stack's CA (the API server's
        # kubelet client) reach the kubelet's API; the link is private anyway.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "serializeImagePulls": False,
    }


def kubelet_command(
    binary: Path, layout: Layout, link: Link, labels: Mapping[str, str] | None = None
) -> list[str]:
    """The kubelet; `labels` it puts on the Node when it registers it (the egress
    IPs the node holds: what a platform team labels its egress nodes with)."""
    node_labels = (
        [f"--node-labels={','.join(f'{k}={v}' for k, v in sorted(labels.items()))}"]
        if labels
        else []
    )
    return [
        str(binary),
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={layout.kubelet_kubeconfig}",
        f"--root-dir={layout.kubelet_root}",
        f"--cert-dir={layout.pki / 'kubelet'}",
        f"--node-ip={link.node_ip}",
        f"--hostname-override={NODE_NAME}",
        *node_labels,
        "--v=1",
    ]


def kube_proxy_config(layout: Layout, pod_cidr: str = POD_CIDR) -> dict[str, Any]:
    """kube-proxy in iptables mode inside the node's namespace (its rules go with it).

    Conntrack limits are the host's, not the namespace's: kube-proxy is told
    to leave them (zero means "do not set")."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(layout.kube_proxy_kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": pod_cidr,
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{KUBE_PROXY_METRICS_PORT}",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def kube_proxy_command(binary: Path, layout: Layout) -> list[str]:
    return [str(binary), f"--config={layout.kube_proxy_config}", "--v=1"]


def kubernetes_endpoints(link: Link, apiserver_port: int) -> list[dict[str, Any]]:
    """The `kubernetes` Service's endpoints: the host end of the link, whose DNAT
    rule carries the connection to the API server on loopback. The API server
    writes none (`--endpoint-reconciler-type=none`): its own address is 127.0.0.1."""
    port = {"name": "https", "port": apiserver_port, "protocol": "TCP"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": link.host_ip}], "ports": [port]}],
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": ENDPOINTS_MANAGER,
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [link.host_ip], "conditions": {"ready": True}}],
            "ports": [port],
        },
    ]


KAFKA_SERVICE = "mailpipe-kafka"  # in `default`, beside `kubernetes`


def kafka_service(link: Link, service_ip: str, port: int) -> list[dict[str, Any]]:
    """The stack's Kafka as a Service for pods: a fixed ClusterIP (the address
    the broker's pods listener advertises) and, with no selector, endpoints
    written here: the host end of the link, whose DNAT rule leads to Kafka's
    pods listener on loopback. Same port throughout: the broker's metadata
    names it, and the client connects to exactly that."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": KAFKA_SERVICE, "namespace": "default"},
        "spec": {
            "clusterIP": service_ip,
            "ports": [{"name": "kafka", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }
    endpoints = kubernetes_endpoints(link, port)
    for obj in endpoints:
        obj["metadata"]["name"] = KAFKA_SERVICE
        if obj["kind"] == "EndpointSlice":
            obj["metadata"]["labels"]["kubernetes.io/service-name"] = KAFKA_SERVICE
            obj["ports"] = [{"name": "kafka", "port": port, "protocol": "TCP"}]
        else:
            obj["subsets"][0]["ports"] = [{"name": "kafka", "port": port, "protocol": "TCP"}]
    return [service, *endpoints]


def containerd_command(binary: Path, layout: Layout) -> list[str]:
    return [str(binary), f"--config={layout.containerd_config}", "--log-level=warn"]


def scheduler_command(binary: Path, kubeconfig: Path, port: int) -> list[str]:
    """kube-scheduler on the host's loopback, as the stack's admin (one node, one scheduler)."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--v=1",
    ]


def controller_manager_command(
    binary: Path, kubeconfig: Path, port: int, ca_cert: Path, sa_key: Path, layout: Layout
) -> list[str]:
    """kube-controller-manager: Deployments, ReplicaSets, garbage collection,
    ServiceAccounts and the root CA ConfigMap that pods' token volumes need."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--controllers={CONTROLLERS}",
        f"--root-ca-file={ca_cert}",
        f"--service-account-private-key-file={sa_key}",
        "--use-service-account-credentials=true",
        # Else it creates /usr/libexec/kubernetes/kubelet-plugins/volume/exec.
        f"--flex-volume-plugin-dir={layout.kubelet_root / 'volume-plugins'}",
        "--v=1",
    ]


def kubeconfig(server: str, ca: Path, cert: Path, key: Path, server_name: str) -> dict[str, Any]:
    """A kubeconfig for the node's side of the link: the serving certificate names
    127.0.0.1 and localhost, not the link's host address, hence `tls-server-name`."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devstack",
                "cluster": {
                    "server": server,
                    "certificate-authority": str(ca),
                    "tls-server-name": server_name,
                },
            }
        ],
        "users": [
            {"name": "node", "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "node", "context": {"cluster": "devstack", "user": "node"}}],
        "current-context": "node",
    }


def cgroup_dirs(hierarchies: Iterable[Path], path: str) -> list[Path]:
    """`path` in every cgroup hierarchy (mount points of v1 controllers and v2)."""
    return [mount / path.lstrip("/") for mount in hierarchies]


def cgroup_hierarchies(mountinfo: str) -> list[Path]:
    """Mount points of every cgroup hierarchy in /proc/self/mountinfo: runc
    creates a container's cgroup in each of them, so `down` looks in each."""
    found = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) >= 5 and rfields and rfields[0] in {"cgroup", "cgroup2"}:
            found.append(Path(fields[4]))
    return found


def mounts_under(mountinfo: str, root: Path) -> list[Path]:
    """Mount points at or below `root`, deepest first (the order to unmount them)."""
    prefix = str(root).rstrip("/")
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")  # mountinfo octal-escapes spaces
        if point == prefix or point.startswith(prefix + "/"):
            points.append(Path(point))
    # Deepest first; a path mounted twice is listed twice and unmounted twice.
    return sorted(points, key=lambda p: len(p.parts), reverse=True)
