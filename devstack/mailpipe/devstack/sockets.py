"""Which addresses a local process listens on, read from /proc (Linux).

The local stack promises to stay on loopback; the demo checks that promise on
every process it started, rather than trusting each component's flags.
`parse_listeners` is the pure part (the kernel's table format); `listening`
does the reading.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

LISTEN_STATE = "0A"  # TCP_LISTEN in the kernel's `st` column
INODE_COLUMN = 9  # sl local rem st tx:rx tr:when retrnsmt uid timeout inode


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A /proc/net/tcp{,6} address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return ipaddress.IPv4Address(words)
    return ipaddress.IPv6Address(words)


def parse_listeners(table: str, inodes: set[str]) -> list[tuple[str, int]]:
    """(address, port) of the listening sockets in a /proc/net/tcp{,6} table whose
    inode is one of `inodes`."""
    found = []
    for line in table.splitlines()[1:]:
        cols = line.split()
        if len(cols) <= INODE_COLUMN or cols[3] != LISTEN_STATE or cols[INODE_COLUMN] not in inodes:
            continue
        host, port = cols[1].split(":")
        found.append((str(_address(host)), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process `pid` holds open (empty if it is gone)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return set()
    for fd in fds:
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def listening(pids: Iterable[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the processes `pids` listen on."""
    inodes = set().union(*(socket_inodes(p) for p in pids))
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            found += parse_listeners(Path(table).read_text(), inodes)
        except OSError:
            continue  # no IPv6 in this kernel
    return found
