"""Relay throughput against Postfix and the raw SMTP limit, in one run on one machine.

All routed to postfix's `smtp-sink` on loopback, rated by what the sink counts:

- pipeline (the headline): one `mailpipe relay`, started and caught up, while
  the records are produced into Kafka (as a fan-out writes them); from the
  first record produced until the sink has counted every message. CPU per
  message is the relay's CPU over that window (start-up excluded);
- pipeline, two processes: the same with two relays in one group (both cores,
  as postfix's processes use them);
- 100 KB messages, DKIM-signed (RSA-2048), one and two relays, against postfix
  with Debian's OpenDKIM as a milter (relaxed/relaxed, RSA-2048, same key); the
  sink keeps every message and each signature is verified with dkimpy;
- DKIM on 2 KB messages, one and two relays, against one core's
  `openssl speed rsa2048` signing rate (the RSA limit);
- preloaded (a diagnostic): records already on Kafka, rate between the first
  and the last delivered event; CPU per message includes start-up;
- postfix: `smtp-source` -> a private Debian postfix (connection cache on,
  destination concurrency 20) -> smtp-sink; from injection start until the
  sink has counted N messages;
- raw: `smtp-source -d` (connection reuse, 20 sessions) straight into
  smtp-sink: the ceiling of this machine.

Ratios, not absolute numbers, are the result: everything shares two cores.
Writes bench/results/relay.json. Loopback only; bounded by N.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from kafka import KafkaProducer

from mailpipe.contracts.config import DKIMSettings, EgressIP, KafkaSettings, Route, Throttle
from mailpipe.contracts.topics import pool_prefix
from mailpipe.contracts.wire import encode
from mailpipe.devstack import harness, samples
from mailpipe.devstack.certs import write_rsa_key
from mailpipe.devstack.procs import free_port, listening
from mailpipe.devstack.stack import Stack
from mailpipe.kafkakit import ensure_pool_topics, read_topic

from .common import PeakRSS, cpu_seconds, write_result

SINK_HOST = "127.0.0.5"
SESSIONS = 20  # postfix's destination concurrency and smtp-source's sessions
MESSAGE_BYTES = 2048
DOMAINS = [f"dom{i}.test" for i in range(10)]
DEFAULT_MESSAGES = 20_000  # about a minute of relay time: long enough to dwarf start-up
SINK_BACKLOG = 1024  # smtp-sink's listen backlog: more than every session at once
SINK_START_SECONDS = 10
SINK_POLL_SECONDS = 0.05  # the rate is measured against this: poll finer than 1% of a run
RAW_TIMEOUT_SECONDS = 60
POSTFIX_TIMEOUT_SECONDS = 300
RELAY_TIMEOUT_SECONDS = 600
RELAY_STOP_GRACE_SECONDS = 60
# postfix's master forks qmgr and its listeners after `start` returns; timing
# starts once they are up, as it always has (the reference must not move).
POSTFIX_SETTLE_SECONDS = 1
LAST_SAMPLE_SECONDS = 0.2  # two RSS/CPU samples (every 100 ms) after the last delivery
PARTITIONS = 4
MAX_IN_FLIGHT_RECORDS = 4000  # read far ahead: the bench measures SMTP, not Kafka round trips
MESSAGES_PER_CONNECTION = 1000  # reuse connections as smtp-source -d and postfix's cache do
PRODUCER_LINGER_MS = 20  # batch the pre-load; it is not measured
PYSPY_RATE_HZ = 400
THROTTLE_PER_MINUTE = 120  # a rate-limited domain: 2 a second, far below the relay's speed
THROTTLE_MESSAGES = 41  # 40 intervals at the limit: 20 s
BIG_MESSAGE_BYTES = 100 * 1024  # KumoMTA's published figure is for 100 KB with DKIM
DEFAULT_BIG_MESSAGES = 3000  # 300 MB through each path, kept by the sink to verify
BIG_MAX_IN_FLIGHT_RECORDS = 500  # the read window of 100 KB records: 50 MB in memory
DKIM_DOMAIN, DKIM_SELECTOR = "src.test", "bench"
MILTER_START_SECONDS = 10
ASSIGN_TIMEOUT_SECONDS = 120  # relays joining their group on a loaded machine
PRODUCE_MAX_BYTES = 2 * 1024 * 1024  # one 100 KB record and its JSON escaping fit
OPENSSL_SECONDS = 3  # `openssl speed -seconds`: long enough for a steady rate


class Sink:
    """postfix's smtp-sink with a running counter (-c) we read back; with `keep`,
    every message is kept in a file of its own (-d) to be verified afterwards."""

    def __init__(self, port: int, workdir: Path, keep: bool = False) -> None:
        self.kept = workdir / f"kept-{port}"
        dump: list[str] = []
        if keep:
            self.kept.mkdir(parents=True)
            shutil.chown(self.kept, "postfix")
            dump = ["-d", f"{self.kept}/%H%M%S."]  # smtp-sink appends a random suffix
        self.child = harness.start(
            "smtp-sink",
            [
                "/usr/sbin/smtp-sink",
                "-c",
                "-u",
                "postfix",
                *dump,
                f"{SINK_HOST}:{port}",
                str(SINK_BACKLOG),
            ],
            workdir / f"sink-{port}.out",
        )
        harness.wait_for(
            lambda: listening(SINK_HOST, port),
            SINK_START_SECONDS,
            "smtp-sink to listen",
            watch=[self.child],
            interval_seconds=SINK_POLL_SECONDS,
        )

    def count(self) -> int:
        text = self.child.log.read_bytes().decode(errors="replace").replace("\r", "\n")
        found = re.findall(r"mesg=(\d+)", text)
        return int(found[-1]) if found else 0

    def wait_for(self, n: int, timeout_s: float) -> float:
        """Wait until the sink has counted `n` messages; returns when (monotonic)."""
        harness.wait_for(
            lambda: self.count() >= n,
            timeout_s,
            f"the sink to count {n} messages",
            watch=[self.child],
            interval_seconds=SINK_POLL_SECONDS,
        )
        return time.monotonic()

    def stop(self) -> None:
        self.child.stop()

    def verified(self, public_txt: bytes) -> tuple[int, int]:
        """(messages kept, messages whose DKIM signature verifies with dkimpy);
        the kept files are removed as they are read."""
        kept = good = 0
        for path in sorted(self.kept.iterdir()):
            kept += 1
            good += bool(dkim.verify(path.read_bytes(), dnsfunc=lambda *_, **__: public_txt))
            path.unlink()
        return kept, good


def dkim_txt(key_path: Path) -> bytes:
    """The selector's DNS TXT record for the key at `key_path`."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def smtp_source(n: int, target: str, size: int = MESSAGE_BYTES) -> None:
    """Inject n messages over SESSIONS reused connections (-d) with postfix's smtp-source."""
    subprocess.run(
        [
            "/usr/sbin/smtp-source",
            "-s",
            str(SESSIONS),
            "-m",
            str(n),
            "-l",
            str(size),
            "-d",
            "-f",
            "bench@src.test",
            "-t",
            "rcpt@dom0.test",
            target,
        ],
        check=True,
        capture_output=True,
    )


def raw_limit(n: int, port: int, workdir: Path) -> float:
    sink = Sink(port, workdir)
    try:
        start = time.monotonic()
        smtp_source(n, f"{SINK_HOST}:{port}")
        end = sink.wait_for(n, RAW_TIMEOUT_SECONDS)
        return n / (end - start)
    finally:
        sink.stop()


def _postfix(conf: Path, action: str) -> None:
    # postfix reports startup errors only to a terminal or syslog: give it a terminal.
    out = subprocess.run(
        ["script", "-qc", f"postfix -c {conf} {action}", "/dev/null"],
        capture_output=True,
        text=True,
    )
    if action == "start" and "startup failed" in out.stdout:
        raise RuntimeError(f"postfix did not start: {out.stdout}")


def opendkim(key: Path, port: int, workdir: Path) -> harness.Child:
    """Debian's OpenDKIM as a signing milter on a loopback port: relaxed/relaxed,
    rsa-sha256, the relay's key and selector, in the foreground as our child."""
    conf = workdir / "opendkim.conf"
    conf.write_text(
        "\n".join(
            [
                "Syslog no",
                "Mode s",
                f"Domain {DKIM_DOMAIN}",
                f"Selector {DKIM_SELECTOR}",
                f"KeyFile {key}",
                "RequireSafeKeys no",  # the bench's key sits in a world-readable temp dir
                "Canonicalization relaxed/relaxed",
                "SignatureAlgorithm rsa-sha256",
                f"Socket inet:{port}@127.0.0.1",
                "InternalHosts 127.0.0.0/8",
                "UserID postfix",
                "",
            ]
        )
    )
    child = harness.start(
        "opendkim", ["/usr/sbin/opendkim", "-f", "-x", str(conf)], conf.parent / "opendkim.log"
    )
    harness.wait_for(
        lambda: listening("127.0.0.1", port),
        MILTER_START_SECONDS,
        "opendkim to listen",
        watch=[child],
        interval_seconds=SINK_POLL_SECONDS,
    )
    return child


def postfix_rate(
    n: int,
    sink_port: int,
    workdir: Path,
    size: int = MESSAGE_BYTES,
    dkim_key: Path | None = None,
) -> tuple[float, tuple[int, int] | None]:
    """Debian's postfix as a relay, configured for throughput, into the same sink:
    (messages/s, (kept, verified) when it signs with OpenDKIM)."""
    base = workdir / ("postfix-dkim" if dkim_key else "postfix")
    conf, queue, data = base / "conf", base / "queue", base / "data"
    for d in (conf, queue, data):
        d.mkdir(parents=True, exist_ok=True)
    shutil.chown(data, "postfix")
    for d in (workdir, base, conf):
        d.chmod(0o755)
    listen = free_port()
    milter: list[str] = []
    signer = None
    if dkim_key is not None:
        milter_port = free_port()
        milter = [
            f"smtpd_milters = inet:127.0.0.1:{milter_port}",
            "milter_default_action = tempfail",  # an unsigned message is never counted
        ]
        signer = opendkim(dkim_key, milter_port, base)
    (conf / "main.cf").write_text(
        "\n".join(
            [
                "compatibility_level = 3.6",
                f"queue_directory = {queue}",
                f"data_directory = {data}",
                "mail_owner = postfix",
                "setgid_group = postdrop",
                "inet_interfaces = loopback-only",
                "inet_protocols = ipv4",
                "myhostname = bench-postfix.test",
                "mydestination =",
                "mynetworks = 127.0.0.0/8",
                f"relayhost = [{SINK_HOST}]:{sink_port}",
                "smtp_connection_cache_on_demand = yes",
                f"default_destination_concurrency_limit = {SESSIONS}",
                f"smtp_destination_concurrency_limit = {SESSIONS}",
                "smtpd_recipient_restrictions = permit_mynetworks, reject",
                f"maillog_file = {base}/maillog",
                f"maillog_file_prefixes = {base}",
                *milter,
                "",
            ]
        )
    )
    master = Path("/etc/postfix/master.cf").read_text()
    master = re.sub(
        r"^smtp\s+inet.*$", f"127.0.0.1:{listen} inet n - n - - smtpd", master, flags=re.M
    )
    (conf / "master.cf").write_text(master)
    sink = Sink(sink_port, workdir, keep=dkim_key is not None)
    try:
        with _config_dir_allowed(conf):
            _postfix(conf, "start")
            try:
                time.sleep(POSTFIX_SETTLE_SECONDS)
                start = time.monotonic()
                smtp_source(n, f"127.0.0.1:{listen}", size)
                end = sink.wait_for(n, POSTFIX_TIMEOUT_SECONDS)
            finally:
                # postfix's own stop, by its config dir: only the instance started here
                _postfix(conf, "stop")
                sink.stop()
    finally:
        if signer is not None:
            signer.stop()
    verified = sink.verified(dkim_txt(dkim_key)) if dkim_key is not None else None
    return n / (end - start), verified


SYSTEM_MAIN_CF = Path("/etc/postfix/main.cf")
ALTERNATE_DIRS = "alternate_config_directories"
MINIMAL_MAIN_CF = "compatibility_level = 3.6\n"  # what postfix needs to read the list at all


@contextmanager
def _config_dir_allowed(conf: Path) -> Iterator[None]:
    """postfix -c needs the default main.cf to list the directory (postfix's rule).

    Added to whatever is listed there already and removed afterwards, so a
    concurrent benchmark's private postfix keeps its own entry; a main.cf that
    only exists for this is removed again."""
    existed = SYSTEM_MAIN_CF.exists()

    def edit(add: bool) -> None:
        text = SYSTEM_MAIN_CF.read_text() if SYSTEM_MAIN_CF.exists() else ""
        lines = (text or MINIMAL_MAIN_CF).splitlines()
        listed = [line for line in lines if line.startswith(ALTERNATE_DIRS)]
        others = [line for line in lines if not line.startswith(ALTERNATE_DIRS)]
        dirs = [d for line in listed for d in line.partition("=")[2].replace(",", " ").split()]
        dirs = [d for d in dirs if d != str(conf)] + ([str(conf)] if add else [])
        if dirs:
            others.append(f"{ALTERNATE_DIRS} = {' '.join(dirs)}")
        text = "\n".join(others) + "\n"
        if not existed and text == MINIMAL_MAIN_CF:
            SYSTEM_MAIN_CF.unlink(missing_ok=True)
        else:
            SYSTEM_MAIN_CF.write_text(text)

    edit(add=True)
    try:
        yield
    finally:
        edit(add=False)


def _body(size: int = MESSAGE_BYTES) -> str:
    """`size` bytes of text in the shape smtp-source sends (80-byte lines), so
    the relay encodes what postfix relays: 7bit text, not one long line."""
    lines = [f"{i % 10}" + "X" * 77 for i in range(size // 79 + 1)]
    return "\n".join(lines)[:size]


def _relay_config(
    stack: Stack,
    sink_port: int,
    workdir: Path,
    dkim_key: Path | None = None,
    domains: list[str] = DOMAINS,
    throttles: dict[str, Throttle] | None = None,
    max_in_flight: int = MAX_IN_FLIGHT_RECORDS,
) -> tuple[KafkaSettings, Path]:
    """A fresh pool (its own namespace and topics) routed to the sink: (its Kafka
    settings, the relay config file)."""
    state = stack.state
    assert state is not None
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = pool_prefix(f"bench{time.time_ns()}", "pool")  # a fresh namespace per run
    route = [Route(host=SINK_HOST, port=sink_port)]
    kafka: KafkaSettings = samples.pool_topics(
        state.kafka_bootstrap, prefix, ["1m"], max_in_flight_records=max_in_flight
    )
    dkim_settings = None
    if dkim_key is not None:
        dkim_settings = DKIMSettings(
            domain=DKIM_DOMAIN, selector=DKIM_SELECTOR, private_key_path=str(dkim_key)
        )
    config = samples.relay_config(
        "bench/relay",
        kafka,
        [EgressIP(address="127.0.0.2", helo="bench.src.test")],
        routes={d: route for d in domains},
        throttle_default=Throttle(
            max_connections=SESSIONS, messages_per_connection=MESSAGES_PER_CONNECTION
        ),
        throttles=throttles or {},
        dkim=dkim_settings,
    )
    path = samples.write_config(config, workdir / "relay.yaml")
    ensure_pool_topics(config.kafka, partitions=PARTITIONS)
    return config.kafka, path


def _records(
    n: int, prefix: str, size: int, domains: list[str] = DOMAINS
) -> list[tuple[bytes, bytes]]:
    """n encoded delivery records (key, value) as the operator's fan-out writes them."""
    body = _body(size)
    out = []
    for i in range(n):
        record = samples.delivery_record(
            f"u{i}@{domains[i % len(domains)]}",
            id=f"{prefix}-{i}",
            campaign="bench/campaign",
            sender=f"bench@{DKIM_DOMAIN}",
            subject=f"bench {i}",
            text=body,
        )
        out.append((record.domain.encode(), encode(record)))
    return out


def _producer(stack: Stack) -> KafkaProducer:
    state = stack.state
    assert state is not None
    return KafkaProducer(
        bootstrap_servers=state.kafka_bootstrap,
        acks="all",
        linger_ms=PRODUCER_LINGER_MS,
        max_request_size=PRODUCE_MAX_BYTES,
    )


def _relay_command(path: Path) -> list[str]:
    return [str(harness.MAILPIPE), "relay", "--config", str(path), "--log-level", "info"]


_ASSIGNED = re.compile(r"assigned (\d+) of (\d+) outbound partitions")


def _assigned(log: Path) -> int | None:
    """How many outbound partitions the relay logging to `log` was last assigned."""
    found = _ASSIGNED.findall(log.read_text(errors="replace")) if log.exists() else []
    return int(found[-1][0]) if found else None


def pipeline_rate(
    n: int,
    stack: Stack,
    sink_port: int,
    workdir: Path,
    processes: int = 1,
    size: int = MESSAGE_BYTES,
    dkim_key: Path | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Relays started and caught up, then `n` records produced while they deliver:
    messages/s by the sink's count from the first record produced, the relays'
    CPU per message over that window, their peak RSS, (kept, verified) if signed
    and `verify` (the sink then writes a file per message, which slows it)."""
    verify = verify and dkim_key is not None
    in_flight = BIG_MAX_IN_FLIGHT_RECORDS if size > MESSAGE_BYTES else MAX_IN_FLIGHT_RECORDS
    kafka, path = _relay_config(stack, sink_port, workdir, dkim_key, max_in_flight=in_flight)
    sink = Sink(sink_port, workdir, keep=verify)
    relays = [
        harness.start(f"relay-{i}", _relay_command(path), workdir / f"relay-{i}.log")
        for i in range(processes)
    ]
    rss = [PeakRSS(r.pid) for r in relays]
    watch = [*relays, sink.child]
    producer = _producer(stack)
    try:
        # every relay holds its share of the partitions...
        harness.wait_for(
            lambda: (
                all(_assigned(r.log) for r in relays)
                and sum(_assigned(r.log) or 0 for r in relays) == PARTITIONS
            ),
            ASSIGN_TIMEOUT_SECONDS,
            f"{processes} relays to share {PARTITIONS} partitions",
            watch=watch,
        )
        # ...and has delivered from each of them: connections and MX answers warm,
        # as postfix's are after its first message
        warm = _records(PARTITIONS * SESSIONS, f"{path.parent.name}-warm", size)
        for i, (key, value) in enumerate(warm):
            producer.send(kafka.outbound_topic, key=key, value=value, partition=i % PARTITIONS)
        producer.flush()
        harness.wait_for(
            lambda: sink.count() >= len(warm),
            RELAY_TIMEOUT_SECONDS,
            "the relays to deliver the warm-up",
            watch=watch,
            interval_seconds=SINK_POLL_SECONDS,
        )
        records = _records(n, path.parent.name, size)
        cpu_before = sum(cpu_seconds(r.pid) or 0.0 for r in relays)
        start = time.monotonic()
        for key, value in records:
            producer.send(kafka.outbound_topic, key=key, value=value)
        producer.flush()
        end = sink.wait_for(len(warm) + n, RELAY_TIMEOUT_SECONDS)
        cpu = sum(cpu_seconds(r.pid) or 0.0 for r in relays) - cpu_before
    finally:
        producer.close()
        for r in relays:
            r.request_stop()
        for r in relays:
            r.stop(RELAY_STOP_GRACE_SECONDS)
        peak = sum(m.stop() for m in rss)
        sink.stop()
    result: dict[str, Any] = {
        "msgs_per_s": round(n / (end - start), 1),
        "cpu_us_per_msg": round(cpu * 1e6 / n),
        "peak_rss_mb": round(peak, 1),
    }
    if verify and dkim_key is not None:
        kept, good = sink.verified(dkim_txt(dkim_key))
        result |= {"kept": kept, "dkim_verified": good}
    return result


def relay_rate(
    n: int,
    stack: Stack,
    sink_port: int,
    workdir: Path,
    dkim_key: Path | None = None,
    domains: list[str] = DOMAINS,
    throttles: dict[str, Throttle] | None = None,
) -> tuple[float, float, float]:
    """Records preloaded, then one relay (a diagnostic: the rate excludes
    producing them): (messages/s between the first and last delivered event,
    peak RSS MiB, CPU microseconds per message incl. start-up)."""
    state = stack.state
    assert state is not None
    kafka, path = _relay_config(stack, sink_port, workdir, dkim_key, domains, throttles)
    producer = _producer(stack)
    for key, value in _records(n, path.parent.name, MESSAGE_BYTES, domains):
        producer.send(kafka.outbound_topic, key=key, value=value)
    producer.flush()
    producer.close()

    sink = Sink(sink_port, workdir)
    profile = os.environ.get("MAILPIPE_BENCH_PROFILE")
    sampled = os.environ.get("MAILPIPE_BENCH_PYSPY")
    cmd = _relay_command(path)
    if profile:  # deterministic profile of the whole process (slows it down)
        cmd = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "mailpipe.cli", *cmd[1:]]
    elif sampled:  # sampling profile of every thread, folded stacks (py-spy must be installed)
        pyspy = str(Path(sys.executable).parent / "py-spy")
        rate = str(PYSPY_RATE_HZ)
        spy = ["record", "-r", rate, "--threads", "--gil", "-f", "raw", "-o", sampled, "--"]
        cmd = [pyspy, *spy, *cmd]
    relay = harness.start("relay", cmd, workdir / "relay.log")
    rss = PeakRSS(relay.pid)
    try:
        harness.wait_for(
            lambda: sink.count() >= n,
            RELAY_TIMEOUT_SECONDS,
            f"the relay to deliver {n} messages",
            watch=[relay, sink.child],
            interval_seconds=SINK_POLL_SECONDS,
        )
        time.sleep(LAST_SAMPLE_SECONDS)
    finally:
        # py-spy writes its profile on SIGINT (SIGTERM would lose it)
        relay.stop(RELAY_STOP_GRACE_SECONDS, signal.SIGINT if sampled else signal.SIGTERM)
        peak = rss.stop()
        cpu = rss.cpu_s
        sink.stop()
    times = sorted(_event_times(state.kafka_bootstrap, kafka.events_topic))
    assert len(times) >= n, f"{len(times)} events for {n} messages"
    return (n - 1) / (times[-1] - times[0]), peak, cpu * 1e6 / n


def openssl_rsa2048_signs_per_s() -> float:
    """One core's RSA-2048 signing rate, as `openssl speed` measures it."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(OPENSSL_SECONDS), "rsa2048"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = re.search(r"^rsa\s+2048 bits\s+\S+s\s+\S+s\s+([\d.]+)", out, flags=re.M)
    if found is None:
        raise RuntimeError(f"no rsa 2048 line in openssl speed's output: {out[-300:]}")
    return float(found.group(1))


def throttle_use(stack: Stack, sink_port: int, workdir: Path) -> float:
    """The share of a domain's rate limit the relay uses (1.0: exactly the limit).

    The integration test (tests/relay/integration/test_shaping.py) proves the
    limit holds; how close to it the relay sends is a throughput figure that a
    busy machine lowers, so it is measured here rather than asserted there."""
    domain = "throttled.test"
    workdir.mkdir(parents=True, exist_ok=True)
    limit = Throttle(messages_per_minute=THROTTLE_PER_MINUTE)
    rate, _, _ = relay_rate(
        THROTTLE_MESSAGES, stack, sink_port, workdir, domains=[domain], throttles={domain: limit}
    )
    return rate * 60 / THROTTLE_PER_MINUTE


def _event_times(bootstrap: str, topic: str) -> list[float]:
    """When each delivery happened; the topic's other records (warm-up usage,
    site actions) have no disposition and are passed over."""
    events = (json.loads(v) for _, v in read_topic(bootstrap, topic) if v)
    return [e["time"] for e in events if e.get("disposition") == "delivered"]


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the stack and servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--big-messages", type=int, default=DEFAULT_BIG_MESSAGES)
    parser.add_argument(
        "--relay-only",
        action="store_true",
        help="skip the postfix and raw references (iterating on the relay; no result file)",
    )
    parser.add_argument(
        "--dkim",
        action="store_true",
        help="the preloaded diagnostic signs every message (RSA-2048); implies --relay-only",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-bench-"))
    workdir.chmod(0o755)  # postfix, opendkim and smtp-sink run as postfix
    n, big = args.messages, args.big_messages
    print(f"bench relay: {n} messages of {MESSAGE_BYTES} B to {len(DOMAINS)} domains, in {workdir}")
    args.relay_only = args.relay_only or args.dkim
    key = workdir / "dkim.pem"
    write_rsa_key(key)  # RSA-2048, the relay's and OpenDKIM's
    key.chmod(0o644)
    if not args.relay_only:
        raw = raw_limit(n, free_port(SINK_HOST), workdir)
        print(f"raw smtp-source -> smtp-sink: {raw:.0f} msg/s")
        pf, _ = postfix_rate(n, free_port(SINK_HOST), workdir)
        print(f"postfix -> smtp-sink: {pf:.0f} msg/s")
        pf_big, pf_verified = postfix_rate(
            big, free_port(SINK_HOST), workdir, BIG_MESSAGE_BYTES, key
        )
        print(f"postfix + opendkim, 100 KB: {pf_big:.0f} msg/s (kept, verified: {pf_verified})")
        signs = openssl_rsa2048_signs_per_s()
        print(f"openssl speed rsa2048, one core: {signs:.0f} sign/s")
    stack = Stack(workdir / "stack")
    stack.up()
    try:
        figures: dict[str, dict[str, Any]] = {}
        runs: dict[str, dict[str, Any]] = {
            "pipeline": {"n": n},
            "pipeline_2proc": {"n": n, "processes": 2},
            # against the RSA limit: the sink keeps nothing (the 100 KB runs verify)
            "dkim_2kb": {"n": n, "dkim_key": key, "verify": False},
            "dkim_2kb_2proc": {"n": n, "dkim_key": key, "processes": 2, "verify": False},
            "big_dkim": {"n": big, "size": BIG_MESSAGE_BYTES, "dkim_key": key},
            "big_dkim_2proc": {
                "n": big, "size": BIG_MESSAGE_BYTES, "dkim_key": key, "processes": 2
            },
        }  # fmt: skip
        for name, run in runs.items():
            port = free_port(SINK_HOST)
            figures[name] = pipeline_rate(
                stack=stack, sink_port=port, workdir=workdir / name, **run
            )
            print(f"mailpipe {name}: {figures[name]}")
        relay, peak, cpu_us = relay_rate(
            n, stack, free_port(SINK_HOST), workdir / "preloaded", key if args.dkim else None
        )
        used = throttle_use(stack, free_port(SINK_HOST), workdir / "throttle")
    finally:
        stack.down()
    print(
        f"mailpipe relay, preloaded (diagnostic): {relay:.0f} msg/s "
        f"(peak RSS {peak:.0f} MiB, {cpu_us:.0f} us CPU per message incl. start-up)"
    )
    print(f"a domain limited to {THROTTLE_PER_MINUTE}/min gets {used:.0%} of its limit")
    if args.relay_only:
        return 0
    pipe, two = figures["pipeline"], figures["pipeline_2proc"]
    big1, big2 = figures["big_dkim"], figures["big_dkim_2proc"]
    write_result(
        "relay",
        {
            "messages": n,
            "message_bytes": MESSAGE_BYTES,
            "domains": len(DOMAINS),
            # the headline: produced into Kafka while delivered, rated by the sink
            "pipeline_msgs_per_s": pipe["msgs_per_s"],
            "postfix_msgs_per_s": round(pf, 1),
            "pipeline_vs_postfix": round(pipe["msgs_per_s"] / pf, 2),
            "relay_cpu_us_per_msg": pipe["cpu_us_per_msg"],
            "relay_peak_rss_mb": pipe["peak_rss_mb"],
            "pipeline_2proc_msgs_per_s": two["msgs_per_s"],
            "pipeline_2proc_vs_postfix": round(two["msgs_per_s"] / pf, 2),
            "pipeline_2proc_cpu_us_per_msg": two["cpu_us_per_msg"],
            # DKIM (RSA-2048) on 2 KB messages against one core's RSA limit
            "dkim_2kb_msgs_per_s": figures["dkim_2kb"]["msgs_per_s"],
            "dkim_2kb_cpu_us_per_msg": figures["dkim_2kb"]["cpu_us_per_msg"],
            "openssl_rsa2048_sign_per_s": round(signs, 1),
            "dkim_vs_openssl_sign": round(figures["dkim_2kb"]["msgs_per_s"] / signs, 3),
            "dkim_2kb_2proc_msgs_per_s": figures["dkim_2kb_2proc"]["msgs_per_s"],
            "dkim_2proc_vs_openssl_sign": round(figures["dkim_2kb_2proc"]["msgs_per_s"] / signs, 3),
            # 100 KB, DKIM: the relay (relaxed/simple) and postfix + OpenDKIM (relaxed/relaxed)
            "big_messages": big,
            "big_message_bytes": BIG_MESSAGE_BYTES,
            "big_dkim_msgs_per_s": big1["msgs_per_s"],
            "big_dkim_cpu_us_per_msg": big1["cpu_us_per_msg"],
            "big_dkim_2proc_msgs_per_s": big2["msgs_per_s"],
            "postfix_opendkim_big_msgs_per_s": round(pf_big, 1),
            "big_dkim_vs_postfix_opendkim": round(big1["msgs_per_s"] / pf_big, 2),
            "big_dkim_2proc_vs_postfix_opendkim": round(big2["msgs_per_s"] / pf_big, 2),
            "big_dkim_verified": {
                "relay": [big1["dkim_verified"], big1["kept"]],
                "relay_2proc": [big2["dkim_verified"], big2["kept"]],
                "postfix_opendkim": list(pf_verified or (0, 0))[::-1],
            },
            # diagnostics: records preloaded (producing excluded), and the raw ceiling
            "preloaded_msgs_per_s": round(relay, 1),
            "preloaded_vs_postfix": round(relay / pf, 2),
            "preloaded_cpu_us_per_msg_incl_startup": round(cpu_us),
            "raw_msgs_per_s": round(raw, 1),
            "pipeline_vs_raw": round(pipe["msgs_per_s"] / raw, 3),
            "throttle_use": round(used, 3),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
