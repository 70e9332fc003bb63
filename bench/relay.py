"""Relay throughput against Postfix and the raw SMTP limit, in one run on one machine.

Three measurements of the same load (N messages of 2 KB to 10 domains, all
routed to one postfix `smtp-sink` on loopback):

- relay:   records pre-loaded on Kafka -> one `mailpipe relay` -> smtp-sink;
           rate from the first to the last delivered event's timestamp;
- postfix: `smtp-source` -> a private Debian postfix (connection cache on,
           destination concurrency 20) -> smtp-sink; from injection start
           until the sink has counted N messages;
- raw:     `smtp-source -d` (connection reuse, 20 sessions) straight into
           smtp-sink: the ceiling of this machine.

Ratios, not absolute numbers, are the result: everything shares two cores.
Writes bench/results/relay.json. Loopback only; bounded by N.
"""

from __future__ import annotations

import argparse
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

from kafka import KafkaProducer

from mailpipe.contracts.config import DKIMSettings, EgressIP, KafkaSettings, Route, Throttle
from mailpipe.contracts.topics import pool_prefix
from mailpipe.devstack import harness, samples
from mailpipe.devstack.certs import write_rsa_key
from mailpipe.devstack.procs import free_port, listening
from mailpipe.devstack.stack import Stack
from mailpipe.kafkakit import ensure_pool_topics, read_topic

from .common import PeakRSS, write_result

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


class Sink:
    """postfix's smtp-sink with a running counter (-c) we read back."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.child = harness.start(
            "smtp-sink",
            [
                "/usr/sbin/smtp-sink",
                "-c",
                "-u",
                "postfix",
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


def smtp_source(n: int, target: str) -> None:
    """Inject n messages over SESSIONS reused connections (-d) with postfix's smtp-source."""
    subprocess.run(
        [
            "/usr/sbin/smtp-source",
            "-s",
            str(SESSIONS),
            "-m",
            str(n),
            "-l",
            str(MESSAGE_BYTES),
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


def postfix_rate(n: int, sink_port: int, workdir: Path) -> float:
    """Debian's postfix as a relay, configured for throughput, into the same sink."""
    base = workdir / "postfix"
    conf, queue, data = base / "conf", base / "queue", base / "data"
    for d in (conf, queue, data):
        d.mkdir(parents=True, exist_ok=True)
    shutil.chown(data, "postfix")
    for d in (workdir, base, conf):
        d.chmod(0o755)
    listen = free_port()
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
                "",
            ]
        )
    )
    master = Path("/etc/postfix/master.cf").read_text()
    master = re.sub(
        r"^smtp\s+inet.*$", f"127.0.0.1:{listen} inet n - n - - smtpd", master, flags=re.M
    )
    (conf / "master.cf").write_text(master)
    sink = Sink(sink_port, workdir)
    with _config_dir_allowed(conf):
        _postfix(conf, "start")
        try:
            time.sleep(POSTFIX_SETTLE_SECONDS)
            start = time.monotonic()
            smtp_source(n, f"127.0.0.1:{listen}")
            end = sink.wait_for(n, POSTFIX_TIMEOUT_SECONDS)
            return n / (end - start)
        finally:
            # postfix's own stop, by its config dir: only the instance started here
            _postfix(conf, "stop")
            sink.stop()


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


def _body() -> str:
    """MESSAGE_BYTES of text in the shape smtp-source sends (80-byte lines), so
    the relay encodes what postfix relays: 7bit text, not one 2 KB line."""
    lines = [f"{i % 10}" + "X" * 77 for i in range(MESSAGE_BYTES // 79 + 1)]
    return "\n".join(lines)[:MESSAGE_BYTES]


def relay_rate(
    n: int,
    stack: Stack,
    sink_port: int,
    workdir: Path,
    dkim: bool = False,
    domains: list[str] = DOMAINS,
    throttles: dict[str, Throttle] | None = None,
) -> tuple[float, float, float]:
    """(messages/s, peak RSS MiB, CPU microseconds per message incl. start-up)."""
    state = stack.state
    assert state is not None
    prefix = pool_prefix(f"bench{int(time.time())}", "pool")  # a fresh namespace per run
    route = [Route(host=SINK_HOST, port=sink_port)]
    kafka: KafkaSettings = samples.pool_topics(
        state.kafka_bootstrap, prefix, ["1m"], max_in_flight_records=MAX_IN_FLIGHT_RECORDS
    )
    dkim_settings = None
    if dkim:
        key = workdir / "dkim.pem"
        write_rsa_key(key)
        dkim_settings = DKIMSettings(domain="src.test", selector="bench", private_key_path=str(key))
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
    producer = KafkaProducer(
        bootstrap_servers=state.kafka_bootstrap, acks="all", linger_ms=PRODUCER_LINGER_MS
    )
    body = _body()
    for i in range(n):
        record = samples.delivery_record(
            f"u{i}@{domains[i % len(domains)]}",
            id=f"{prefix}-{i}",
            campaign="bench/campaign",  # as the operator's fan-out writes them
            sender="bench@src.test",
            subject=f"bench {i}",
            text=body,
        )
        samples.send_record(producer, config.kafka.outbound_topic, record)
    producer.flush()
    producer.close()

    sink = Sink(sink_port, workdir)
    profile = os.environ.get("MAILPIPE_BENCH_PROFILE")
    sampled = os.environ.get("MAILPIPE_BENCH_PYSPY")
    cmd = [str(harness.MAILPIPE), "relay", "--config", str(path), "--log-level", "info"]
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
    times = sorted(_event_times(state.kafka_bootstrap, config.kafka.events_topic))
    assert len(times) >= n, f"{len(times)} events for {n} messages"
    return (n - 1) / (times[-1] - times[0]), peak, cpu * 1e6 / n


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
    events = (json.loads(v) for _, v in read_topic(bootstrap, topic) if v)
    return [e["time"] for e in events if e["disposition"] == "delivered"]


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the stack and servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument(
        "--relay-only",
        action="store_true",
        help="skip the postfix and raw references (iterating on the relay; no result file)",
    )
    parser.add_argument(
        "--dkim",
        action="store_true",
        help="the relay signs every message (RSA-2048); implies --relay-only",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-bench-"))
    n = args.messages
    print(f"bench relay: {n} messages of {MESSAGE_BYTES} B to {len(DOMAINS)} domains, in {workdir}")
    args.relay_only = args.relay_only or args.dkim
    if not args.relay_only:
        raw = raw_limit(n, free_port(SINK_HOST), workdir)
        print(f"raw smtp-source -> smtp-sink: {raw:.0f} msg/s")
        pf = postfix_rate(n, free_port(SINK_HOST), workdir)
        print(f"postfix -> smtp-sink: {pf:.0f} msg/s")
    stack = Stack(workdir / "stack")
    stack.up()
    try:
        relay, peak, cpu_us = relay_rate(n, stack, free_port(SINK_HOST), workdir, args.dkim)
        used = throttle_use(stack, free_port(SINK_HOST), workdir / "throttle")
    finally:
        stack.down()
    print(
        f"mailpipe relay -> smtp-sink: {relay:.0f} msg/s "
        f"(peak RSS {peak:.0f} MiB, {cpu_us:.0f} us CPU per message)"
    )
    print(f"a domain limited to {THROTTLE_PER_MINUTE}/min gets {used:.0%} of its limit")
    if args.relay_only:
        return 0
    write_result(
        "relay",
        {
            "messages": n,
            "message_bytes": MESSAGE_BYTES,
            "domains": len(DOMAINS),
            "relay_msgs_per_s": round(relay, 1),
            "postfix_msgs_per_s": round(pf, 1),
            "raw_msgs_per_s": round(raw, 1),
            "relay_vs_postfix": round(relay / pf, 2),
            "relay_vs_raw": round(relay / raw, 3),
            "relay_peak_rss_mb": round(peak, 1),
            "relay_cpu_us_per_msg": round(cpu_us),
            "throttle_use": round(used, 3),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
