"""Reading a process's listening sockets from /proc: the demo's loopback check."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from mailpipe.devstack import sockets

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1
   1: 00000000:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 333 1
   3: 0300007F:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1
"""
TCP6 = """\
  sl  local_address remote_address st tx:rx tr:when retrnsmt uid timeout inode
0: 00000000000000000000000001000000:0050 0:0 0A 0:0 0:0 0 1000 0 555 1
1: 00000000000000000000000000000000:0051 0:0 0A 0:0 0:0 0 1000 0 666 1
2: 0000000000000000FFFF00000100007F:0052 0:0 0A 0:0 0:0 0 1000 0 777 1
"""


def test_parse_listeners_keeps_the_processes_listening_sockets() -> None:
    found = sockets.parse_listeners(TCP, {"111", "222", "333"})
    assert found == [("127.0.0.1", 8080), ("0.0.0.0", 9090)]  # 333 is a connection, 444 not ours
    assert sockets.parse_listeners(TCP, {"444"}) == [("127.0.0.3", 25)]
    found6 = sockets.parse_listeners(TCP6, {"555", "666", "777"})
    assert [(ipaddress.ip_address(a), p) for a, p in found6] == [
        (ipaddress.ip_address("::1"), 80),
        (ipaddress.ip_address("::"), 81),
        (ipaddress.ip_address("::ffff:127.0.0.1"), 82),
    ]


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.3", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.1", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert sockets.is_loopback(address) is loopback


def test_listening_sees_this_process_bind() -> None:
    """Against the real /proc: a socket this process listens on is found, with its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert ("127.0.0.1", port) in sockets.listening([os.getpid()])
