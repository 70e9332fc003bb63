"""How a pool's egress IPs reach the wire on Kubernetes: the words both planes share.

A pod cannot own a source address. mailpipe's answer is hostNetwork plus
placement: the platform team configures the egress IPs on nodes and labels
each node with the addresses it holds (`egress_label`: key
`egress.mailpipe.io/<address>`, any value); the operator gives a hostNetwork
relay a required node affinity on the labels of all its pool's IPs, so the
scheduler places it only where every IP lives (a pool whose IPs no node
advertises stays Pending, and the pool says so); and the relay checks at
start, and at every readiness probe, that it can bind each of them (a label
that lies, an address moved away), and says which it cannot under the
readiness check named `EGRESS_CHECK`, which the operator recognises in a
relay's `/readyz` answer and turns into the pool's reason.

Chosen over an egress proxy (KumoMTA's SOCKS5 proxy, HAProxy `usesrc`)
because it adds no component and no hop: binding a local address needs no
capability, and what a platform team prepares (addresses on nodes, node
labels, a namespace allowed hostNetwork) is what it already does for any
service with a fixed source address. Its cost: a relay's metrics port is a
host port, so one relay of a pool per node (more replicas need more nodes that
hold the IPs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

EGRESS_LABEL_PREFIX = "egress.mailpipe.io/"
# The name of the relay's readiness check of its egress IPs: `/readyz` answers
# "<EGRESS_CHECK>: <problem>" among its reasons, joined by READINESS_SEPARATOR.
EGRESS_CHECK = "egress IPs"
READINESS_SEPARATOR = "; "


def egress_label(address: str) -> str:
    """The node label key saying a node holds `address` (a label key's name part
    takes an IPv4 address as it is: digits and dots, at most 63 characters)."""
    return EGRESS_LABEL_PREFIX + str(ipaddress.IPv4Address(address))


def labelled_addresses(keys: Iterable[str]) -> list[str]:
    """The egress addresses among label (or affinity) keys, in their order."""
    return [k[len(EGRESS_LABEL_PREFIX) :] for k in keys if k.startswith(EGRESS_LABEL_PREFIX)]


def egress_reason(readiness: str) -> str | None:
    """The egress problem in a relay's `/readyz` answer, or None if it names none."""
    prefix = f"{EGRESS_CHECK}: "
    for part in readiness.split(READINESS_SEPARATOR):
        if part.startswith(prefix):
            return part[len(prefix) :].strip()
    return None
