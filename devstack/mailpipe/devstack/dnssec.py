"""A DNSSEC test bed on loopback: nsd serves zones, some signed with
ldns-signzone, and unbound validates them with the signed zones' trust anchors
(DS records), the way a recipient's signed zone and a sender's validating
resolver work on the Internet, minus the root. What the DANE tests of the
relay resolve through (issue 22); nothing in it is a fake of DNSSEC.

- `signed` zones get a KSK and a ZSK (ECDSA P-256, algorithm 13) and their DS
  becomes unbound's trust anchor: answers from them carry the AD bit;
- `unsigned` zones are served as they are; no trust anchor covers them, so
  unbound answers them insecure (no AD), as for an unsigned domain;
- `tamper` edits the signed text after signing (e.g. a TLSA record's data),
  so its signature no longer verifies: unbound answers SERVFAIL (bogus).

Both daemons run in the foreground as children (stopped by pid), on free
loopback ports, with config, zones and logs in `workdir`. `binaries` come
from Debian (`scripts/setup-dnssec.sh`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.resolver

from . import harness, paths
from .procs import free_port

HOST = "127.0.0.1"
TTL_SECONDS = 300  # zone default; tests never change records while the bed runs
READY_SECONDS = 30.0  # nsd and unbound start in well under a second; the machine may be busy
SIGN_SECONDS = 60.0  # ldns-keygen + ldns-signzone of a small zone: milliseconds
ALGORITHM = "ECDSAP256SHA256"  # RFC 8624: MUST implement, small keys, fast signing


@dataclass
class DNSSECBed:
    """nsd + unbound serving `signed` and `unsigned` zones (origin -> records,
    zone-file lines relative to the origin; SOA and NS are added)."""

    workdir: Path
    signed: Mapping[str, list[str]]
    unsigned: Mapping[str, list[str]] = field(default_factory=dict)
    tamper: Mapping[str, str] = field(default_factory=dict)  # signed text: old -> new
    nsd_port: int = 0
    resolver_port: int = 0
    children: list[harness.Child] = field(default_factory=list)

    @property
    def resolver(self) -> str:
        """The validating resolver as a pool's `dnsNameserver` (host:port)."""
        return f"{HOST}:{self.resolver_port}"

    def start(self) -> DNSSECBed:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nsd_port = free_port(HOST)
        self.resolver_port = free_port(HOST)
        anchors = [self._sign(origin, records) for origin, records in self.signed.items()]
        for origin, records in self.unsigned.items():
            self._zone_file(origin, records)
        nsd_conf = self.workdir / "nsd.conf"
        nsd_conf.write_text(self._nsd_config())
        unbound_conf = self.workdir / "unbound.conf"
        unbound_conf.write_text(self._unbound_config(anchors))
        try:
            nsd = harness.start(
                "nsd",
                [str(paths.system_binary("nsd", "/usr/sbin")), "-d", "-c", str(nsd_conf)],
                self.workdir / "nsd.log",
            )
            self.children.append(nsd)
            unbound = harness.start(
                "unbound",
                [str(paths.system_binary("unbound", "/usr/sbin")), "-d", "-c", str(unbound_conf)],
                self.workdir / "unbound.log",
            )
            self.children.append(unbound)
            first = next(iter(self.signed))
            harness.wait_for(
                lambda: self._validated(first),
                READY_SECONDS,
                f"unbound on {self.resolver} to validate {first} from nsd on port {self.nsd_port}",
                watch=self.children,
                retry_on=(dns.exception.DNSException,),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def _validated(self, origin: str) -> bool:
        """Whether unbound answers the zone's SOA as validated (AD)."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [HOST]
        resolver.port = self.resolver_port
        resolver.lifetime = 1.0
        resolver.use_edns(0, dns.flags.DO, 1232)
        answer = resolver.resolve(origin, "SOA")
        return bool(answer.response.flags & dns.flags.AD)

    def _zone_file(self, origin: str, records: list[str]) -> Path:
        origin = origin.rstrip(".")
        head = [
            f"$ORIGIN {origin}.",
            f"$TTL {TTL_SECONDS}",
            f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60",
            f"@ IN NS ns.{origin}.",
            f"ns IN A {HOST}",
        ]
        path = self.workdir / f"{origin}.zone"
        path.write_text("\n".join([*head, *records]) + "\n")
        return path

    def _sign(self, origin: str, records: list[str]) -> Path:
        """Sign the zone (`<origin>.zone.signed`, tampered as asked); its DS file,
        unbound's trust anchor."""
        zone = self._zone_file(origin, records)

        def run(*args: str) -> str:
            binary = str(paths.system_binary(args[0], "/usr/bin"))
            done = subprocess.run(
                [binary, *args[1:]],
                cwd=self.workdir,
                capture_output=True,
                text=True,
                timeout=SIGN_SECONDS,
                check=True,
            )
            return done.stdout.strip()

        ksk = run("ldns-keygen", "-a", ALGORITHM, "-k", origin.rstrip("."))
        zsk = run("ldns-keygen", "-a", ALGORITHM, origin.rstrip("."))
        run("ldns-signzone", str(zone), ksk, zsk)
        signed = zone.with_name(zone.name + ".signed")
        text = signed.read_text()
        for old, new in self.tamper.items():
            if old in text:
                text = text.replace(old, new)
        signed.write_text(text)
        return self.workdir / f"{ksk}.ds"

    def _nsd_config(self) -> str:
        zones = [
            *(f"{o.rstrip('.')}.zone.signed" for o in self.signed),
            *(f"{o.rstrip('.')}.zone" for o in self.unsigned),
        ]
        origins = [*self.signed, *self.unsigned]
        lines = [
            "server:",
            f"  ip-address: {HOST}@{self.nsd_port}",
            "  do-ip6: no",
            f"  zonesdir: {self.workdir}",
            '  database: ""',  # zones from their files only
            f"  zonelistfile: {self.workdir}/zone.list",
            f"  xfrdfile: {self.workdir}/xfrd.state",
            f"  pidfile: {self.workdir}/nsd.pid",
            '  username: ""',  # no privilege drop, no chroot: it only binds a high port
            '  chroot: ""',
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for origin, zone in zip(origins, zones, strict=True):
            lines += ["zone:", f"  name: {origin.rstrip('.')}", f"  zonefile: {zone}"]
        return "\n".join(lines) + "\n"

    def _unbound_config(self, anchors: list[Path]) -> str:
        lines = [
            "server:",
            f"  interface: {HOST}@{self.resolver_port}",
            f"  port: {self.resolver_port}",
            "  do-ip6: no",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f"  directory: {self.workdir}",
            f"  pidfile: {self.workdir}/unbound.pid",
            "  use-syslog: no",
            f"  logfile: {self.workdir}/unbound.log",
            "  verbosity: 1",
            "  val-log-level: 2",  # a bogus answer says why in the log
            "  num-threads: 1",
            "  access-control: 127.0.0.0/8 allow",
            "  do-not-query-localhost: no",  # nsd is on loopback
            '  module-config: "validator iterator"',
            '  local-zone: "test." nodefault',  # else unbound answers RFC 6761's .test itself
            *(f"  trust-anchor-file: {a}" for a in anchors),
        ]
        for origin in [*self.signed, *self.unsigned]:
            name = origin.rstrip(".")
            lines += ["stub-zone:", f'  name: "{name}."', f"  stub-addr: {HOST}@{self.nsd_port}"]
        lines += ["remote-control:", "  control-enable: no"]
        return "\n".join(lines) + "\n"
