"""The node's plan: addresses, names, configs and what `down` looks for, as data."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest

from mailpipe.devstack import node_plan
from mailpipe.devstack.node_plan import Layout, Link, Names, PlanError

LAYOUT = Layout(Path("/state/node"))
LINK = Link(ipaddress.IPv4Network("172.30.0.4/30"))
NAMES = Names("abc123")


@pytest.mark.parametrize(
    ("in_use", "expected"),
    [
        ([], "172.30.0.0/30"),
        (["192.0.2.2", "127.0.0.1"], "172.30.0.0/30"),
        (["172.30.0.1"], "172.30.0.4/30"),  # another stack's host end
        (["172.30.0.2", "172.30.0.5"], "172.30.0.8/30"),  # any address of a /30 takes it
    ],
    ids=["empty", "unrelated", "host-end-taken", "node-ends-taken"],
)
def test_pick_link_skips_every_30_with_an_address_on_the_host(
    in_use: list[str], expected: str
) -> None:
    assert str(node_plan.pick_link(in_use).network) == expected


def test_pick_link_says_when_the_range_is_full() -> None:
    tiny = ipaddress.IPv4Network("172.30.0.0/29")
    with pytest.raises(PlanError, match=r"no free /30 left in 172\.30\.0\.0/29"):
        node_plan.pick_link(["172.30.0.1", "172.30.0.6"], tiny)


def test_link_ends_are_the_two_usable_addresses() -> None:
    assert (LINK.host_ip, LINK.node_ip, LINK.prefix) == ("172.30.0.5", "172.30.0.6", 30)


def test_interface_names_fit_ifnamsiz() -> None:
    assert max(len(NAMES.host_veth), len(NAMES.node_veth)) <= 15


def test_a_root_too_deep_for_a_unix_socket_is_refused_with_the_way_out() -> None:
    deep = Layout(Path("/" + "d" * 90))
    with pytest.raises(PlanError, match=r"too deep.*use a shorter --state-dir"):
        deep.check()
    LAYOUT.check()


@pytest.mark.parametrize(("length", "refused"), [(104, False), (105, True), (107, True)])
def test_the_socket_path_limit_is_containerds_104_bytes(length: int, refused: bool) -> None:
    """containerd 1.6 refuses a socket path over 104 bytes ("unix socket path
    too long (> 104)"), three less than sun_path holds: a 105-byte path passed
    the check and containerd then failed to start (`mailpipe demo --state-dir`
    under pytest's temporary directory)."""
    suffix = len(str(Layout(Path("/x")).containerd_socket) + ".ttrpc") - len("/x")
    root = Layout(Path("/" + "d" * (length - suffix - 1)))
    assert len(str(root.containerd_socket) + ".ttrpc") == length
    if refused:
        with pytest.raises(PlanError, match="too deep"):
            root.check()
    else:
        root.check()


def test_link_commands_address_both_ends_and_route_nothing_beyond_the_link() -> None:
    cmds = node_plan.link_commands(LAYOUT, LINK, NAMES)
    assert cmds[0][:3] == ["ip", "link", "add"]
    assert cmds[0][-2:] == ["netns", "/state/node/netns"]
    assert ["ip", "addr", "add", "172.30.0.5/30", "dev", "mph-abc123"] in cmds
    inside = [c[2:] for c in cmds if c[0] == "nsenter"]
    assert {c[1] for c in cmds if c[0] == "nsenter"} == {"--net=/state/node/netns"}
    assert ["--", "ip", "addr", "add", "172.30.0.6/30", "dev", "eth0"] in inside
    assert not [c for c in inside if "route" in c]


def test_the_dnat_rule_matches_only_the_link_and_carries_the_node_id() -> None:
    rule = node_plan.loopback_dnat(LINK, NAMES, 6443)
    spec = list(rule.spec)
    assert spec[spec.index("-i") + 1] == "mph-abc123"
    assert spec[spec.index("-d") + 1] == "172.30.0.5/32"
    assert spec[spec.index("--to-destination") + 1] == "127.0.0.1:6443"
    assert "mailpipe-node abc123" in spec
    assert rule.add()[:6] == ["iptables", "-w", "-t", "nat", "-A", "PREROUTING"]
    assert rule.delete()[4] == "-D"


def test_containerd_config_is_toml_with_every_path_under_the_node() -> None:
    config = tomllib.loads(node_plan.containerd_config(LAYOUT, "mailpipe.local/pause:1"))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    # Without it runc fails: "can't get final child's PID from pipe".
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["sandbox_image"] == "mailpipe.local/pause:1"
    options = cri["containerd"]["runtimes"]["runc"]["options"]
    assert options["SystemdCgroup"] is False
    assert "io.containerd.internal.v1.opt" in config["disabled_plugins"]  # else /opt/containerd
    paths = [
        config["root"],
        config["state"],
        config["grpc"]["address"],
        options["Root"],
        cri["cni"]["conf_dir"],
    ]
    assert all(p.startswith("/state/node/") for p in paths), paths


def test_cni_keeps_ipam_state_under_the_node_and_masquerades_pods() -> None:
    bridge = node_plan.cni_conflist(LAYOUT)["plugins"][0]
    assert bridge["ipMasq"] is True and bridge["isGateway"] is True
    assert bridge["ipam"]["dataDir"] == "/state/node/cni/ipam"


def test_kubelet_config_fits_cgroup_v1_without_systemd_and_keeps_pods_in_the_node_cgroup() -> None:
    config = node_plan.kubelet_config(LAYOUT, LINK, NAMES, Path("/ca.crt"))
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupRoot"] == "/mailpipe-node-abc123/pods"
    assert config["cgroupsPerQOS"] is True  # off, containerd puts pods in /k8s.io/<id>
    assert (config["failSwapOn"], config["enforceNodeAllocatable"]) == (False, [])
    assert config["address"] == "172.30.0.6"
    assert config["authentication"]["anonymous"]["enabled"] is False
    for key in ("podLogsDir", "volumePluginDir"):
        assert config[key].startswith("/state/node/")
    assert config["imageGCHighThresholdPercent"] == 100  # nothing can be pulled back


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
31 22 0:27 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
40 22 0:50 / /state/node/netns rw shared:20 - nsfs nsfs[net:[4026532174]] rw
41 22 254:0 /state/node/kubelet /state/node/kubelet rw shared:1 - ext4 /dev/vda rw
42 41 0:51 / /state/node/kubelet/pods/x/volumes/token rw - tmpfs tmpfs rw
43 22 0:52 / /state/node2/kubelet rw - tmpfs tmpfs rw
44 22 0:53 / /state/node/with\\040space rw - tmpfs tmpfs rw
"""


def test_mounts_under_lists_the_node_root_deepest_first_and_not_its_neighbours() -> None:
    points = node_plan.mounts_under(MOUNTINFO, Path("/state/node"))
    assert points[0] == Path("/state/node/kubelet/pods/x/volumes/token")
    assert set(points) == {
        Path("/state/node/kubelet/pods/x/volumes/token"),
        Path("/state/node/kubelet"),
        Path("/state/node/netns"),
        Path("/state/node/with space"),
    }


def test_cgroup_hierarchies_are_every_v1_and_v2_mount() -> None:
    assert node_plan.cgroup_hierarchies(MOUNTINFO) == [
        Path("/sys/fs/cgroup/cpu"),
        Path("/sys/fs/cgroup/unified"),
    ]
    assert node_plan.cgroup_dirs(node_plan.cgroup_hierarchies(MOUNTINFO), NAMES.pods_cgroup) == [
        Path("/sys/fs/cgroup/cpu/mailpipe-node-abc123/pods"),
        Path("/sys/fs/cgroup/unified/mailpipe-node-abc123/pods"),
    ]


def test_kube_proxy_leaves_the_hosts_conntrack_settings_alone() -> None:
    config = node_plan.kube_proxy_config(LAYOUT)
    assert config["mode"] == "iptables"
    assert config["clusterCIDR"] == node_plan.POD_CIDR
    # Zero means "do not set": nf_conntrack_max is host-wide, not the namespace's.
    assert config["conntrack"]["maxPerCore"] == 0 and config["conntrack"]["min"] == 0
    assert config["clientConnection"]["kubeconfig"].startswith("/state/node/")


def test_the_kubernetes_service_endpoints_are_the_host_end_of_the_link() -> None:
    endpoints, slice_ = node_plan.kubernetes_endpoints(LINK, 6443)
    assert endpoints["subsets"] == [
        {
            "addresses": [{"ip": "172.30.0.5"}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        }
    ]
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "kubernetes"
    assert slice_["endpoints"][0]["addresses"] == ["172.30.0.5"]


def test_no_node_component_writes_the_default_flex_volume_directory() -> None:
    kubelet = node_plan.kubelet_config(LAYOUT, LINK, NAMES, Path("/ca.crt"))
    kcm = node_plan.controller_manager_command(
        Path("kcm"), Path("/kc"), 1, Path("/ca"), Path("/sa"), LAYOUT
    )
    assert kubelet["volumePluginDir"] == "/state/node/kubelet/volume-plugins"
    assert "--flex-volume-plugin-dir=/state/node/kubelet/volume-plugins" in kcm


def test_only_tcp_and_udp_ports_can_be_exposed() -> None:
    assert "udp" in node_plan.loopback_dnat(LINK, NAMES, 53, "udp").spec
    with pytest.raises(PlanError, match="cannot expose 'sctp' port 9: tcp or udp"):
        node_plan.loopback_dnat(LINK, NAMES, 9, "sctp")


def test_the_kafka_service_has_the_advertised_address_and_the_link_as_endpoint() -> None:
    service, endpoints, slice_ = node_plan.kafka_service(LINK, "10.0.0.9", 41234)
    assert service["spec"]["clusterIP"] == "10.0.0.9"
    assert "selector" not in service["spec"]  # endpoints written, not selected
    # One port throughout: the broker's metadata names it and clients dial it.
    assert service["spec"]["ports"][0]["port"] == service["spec"]["ports"][0]["targetPort"]
    port = {"name": "kafka", "port": 41234, "protocol": "TCP"}
    assert endpoints["metadata"]["name"] == service["metadata"]["name"] == node_plan.KAFKA_SERVICE
    assert endpoints["subsets"] == [{"addresses": [{"ip": "172.30.0.5"}], "ports": [port]}]
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == node_plan.KAFKA_SERVICE
    assert slice_["endpoints"][0]["addresses"] == ["172.30.0.5"] and slice_["ports"] == [port]
    # The `kubernetes` Service's endpoints are not touched by the copy.
    assert node_plan.kubernetes_endpoints(LINK, 6443)[0]["metadata"]["name"] == "kubernetes"


def test_each_node_gets_its_own_egress_block_outside_every_link() -> None:
    first = node_plan.Link(ipaddress.IPv4Network("172.30.0.0/30"))
    assert node_plan.egress_addresses(first) == [
        "172.30.240.1", "172.30.240.2", "172.30.240.3", "172.30.240.4",
    ]  # fmt: skip
    assert str(node_plan.egress_block(LINK)) == "172.30.240.16/28"  # the second /30
    # No link is ever picked where egress addresses live.
    with pytest.raises(PlanError, match="no free /30"):
        node_plan.pick_link([], node_plan.EGRESS_RANGE)


def test_egress_addresses_sit_on_the_node_end_and_come_back_over_the_link() -> None:
    cmds = node_plan.egress_commands(LAYOUT, LINK, NAMES, ["172.30.240.17"], "10.0.0.0/16")
    inside = [c[3:] for c in cmds if c[0] == "nsenter"]
    assert ["ip", "addr", "add", "172.30.240.17/32", "dev", "eth0"] in inside
    assert ["ip", "route", "add", "10.0.0.0/16", "via", "172.30.0.5", "dev", "eth0"] in inside
    assert cmds[-1] == [
        "ip", "route", "add", "172.30.240.16/28", "via", "172.30.0.6", "dev", "mph-abc123",
    ]  # fmt: skip
    labels = node_plan.egress_node_labels(["172.30.240.17"])
    assert labels == {"egress.mailpipe.io/172.30.240.17": "true"}
    kubelet = node_plan.kubelet_command(Path("/bin/kubelet"), LAYOUT, LINK, labels)
    assert "--node-labels=egress.mailpipe.io/172.30.240.17=true" in kubelet
    assert not [a for a in node_plan.kubelet_command(Path("/k"), LAYOUT, LINK) if "labels" in a]
