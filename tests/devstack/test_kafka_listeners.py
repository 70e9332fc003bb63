"""The dev stack's Kafka listeners: host clients on loopback, the node's pods at a ClusterIP."""

from __future__ import annotations

from pathlib import Path

from mailpipe.devstack import kafka, kube


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_pods_get_a_listener_of_their_own_advertised_at_the_kafka_service() -> None:
    ports = kafka.KafkaPorts(broker=1001, controller=1002, pods=1003)
    props = _props(kafka.server_properties(ports, Path("/data")))
    # Every listener binds loopback: the node's DNAT rule brings pods there.
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:1001,PODS://127.0.0.1:1003,CONTROLLER://127.0.0.1:1002"
    )
    # Host clients are told 127.0.0.1; pods, for whom that is themselves, the Service.
    assert props["advertised.listeners"] == (
        f"PLAINTEXT://127.0.0.1:1001,PODS://{kube.KAFKA_SERVICE_IP}:1003"
    )
    assert "PODS:PLAINTEXT" in props["listener.security.protocol.map"].split(",")
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert ports.pods_bootstrap == f"{kube.KAFKA_SERVICE_IP}:1003"


def test_no_pods_listener_without_its_port_or_on_the_sasl_broker() -> None:
    plain = _props(kafka.server_properties(kafka.KafkaPorts(1001, 1002), Path("/data")))
    assert "PODS" not in plain["listeners"] and "PODS" not in plain["advertised.listeners"]
    assert kafka.KafkaPorts(1001, 1002).pods_bootstrap == ""
    sasl = _props(
        kafka.server_properties(
            kafka.KafkaPorts(1001, 1002, 1003), Path("/d"), sasl_users={kafka.SASL_ADMIN: "pw"}
        )
    )
    assert "PODS" not in sasl["listeners"]


def test_the_kafka_service_address_is_in_the_service_range_low_band() -> None:
    """Fixed ClusterIPs belong in the first 256 addresses of a /16 (the band the
    API server allocates last), so no Service created before the node takes it."""
    import ipaddress

    network = ipaddress.IPv4Network(kube.SERVICE_CIDR)
    address = ipaddress.IPv4Address(kube.KAFKA_SERVICE_IP)
    assert address in network and int(address) - int(network.network_address) < 256
    assert kube.KAFKA_SERVICE_IP != kube.KUBERNETES_SERVICE_IP
