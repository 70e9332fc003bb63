"""dnsmasq on a high loopback port, answering MX, A and TXT records for test domains.

Tests describe zones as data (`Zone`); this module renders them into a dnsmasq
config file. Changing records means rewriting the file and restarting dnsmasq
on the same port, which takes milliseconds and keeps resolvers configured.
A null MX (RFC 7505: preference 0, target ".") has no dnsmasq option, so it is
written as a raw MX resource record with `dns-rr`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

MX_RR_TYPE = 15  # RFC 1035 TYPE value for MX


@dataclass(frozen=True)
class Zone:
    """Records of one test domain.

    `mx` is a list of (host, preference); `a` maps host names to IPv4 addresses
    (the domain itself may be among them: implicit MX). `null_mx` publishes
    "0 ." so mail to the domain bounces without a connection. `txt` maps names
    to their TXT records, one string each (e.g. `_mta-sts.<domain>`).
    """

    domain: str
    mx: tuple[tuple[str, int], ...] = ()
    a: Mapping[str, str] = field(default_factory=dict)
    null_mx: bool = False
    txt: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def render_config(zones: Iterable[Zone], port: int, pid_file: Path, log_file: Path) -> str:
    lines = [
        f"port={port}",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        "no-resolv",  # never forward: only our test zones exist
        "no-hosts",
        "no-poll",
        "no-negcache",
        "local=/test/",  # anything else under .test is NXDOMAIN, answered locally
        f"pid-file={pid_file}",
        f"log-facility={log_file}",
        "log-queries",
    ]
    for zone in zones:
        if zone.null_mx:
            # preference 0 (two bytes) + the root name (one zero byte)
            lines.append(f"dns-rr={zone.domain},{MX_RR_TYPE},000000")
        for host, pref in zone.mx:
            lines.append(f"mx-host={zone.domain},{host},{pref}")
        for name, ip in zone.a.items():
            socket.inet_aton(ip)  # refuse anything that is not an IPv4 address
            lines.append(f"host-record={name},{ip}")
        for name, records in zone.txt.items():
            for text in records:
                lines.append(f"txt-record={name},{_txt(text)}")
    return "\n".join(lines) + "\n"


def _txt(text: str) -> str:
    """One TXT string as dnsmasq reads it: quoted, so `;` and spaces stay; a comma
    (dnsmasq's string separator), a quote or a control character is refused."""
    if any(c in text for c in ',"\\') or not text.isprintable() or not text.isascii():
        raise ValueError(f"TXT text dnsmasq cannot carry as one string: {text!r}")
    return f'"{text}"'


def command(config_file: Path) -> list[str]:
    return [
        str(paths.system_binary("dnsmasq", "/usr/sbin")),
        "--keep-in-foreground",
        f"--conf-file={config_file}",
        "--user=root",  # no privilege drop: it only binds a high port
    ]


def is_ready(port: int) -> bool:
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = 1.0
    try:
        resolver.resolve("ready.probe.test", "A")
    except dns.resolver.NXDOMAIN:
        return True  # an authoritative "no" is a working server
    return True
