"""Ports handed to children: never one the kernel may give an outgoing connection."""

from __future__ import annotations

import socket

from mailpipe.devstack import procs


def test_a_free_port_is_outside_the_ephemeral_range_and_bindable_everywhere() -> None:
    """With parallel workers, the OS's own pick (an ephemeral port) was taken by
    an outgoing connection between the pick and the child's bind: a kopf probe
    port was "already in use" and the operator exited."""
    low, high = procs._ephemeral_range()
    ports = {procs.free_port() for _ in range(50)}
    assert all(not low <= p <= high for p in ports), sorted(ports)
    assert len(ports) > 40  # random picks, not one port over and over
    port = procs.free_port("127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", port))


def test_a_port_in_use_on_another_address_is_not_handed_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("0.0.0.0", 0))
        busy = held.getsockname()[1]
        assert not procs._bindable("127.0.0.1", busy)
        assert procs.free_port() != busy
