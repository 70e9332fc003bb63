"""The soak: a long mixed load through two real relays, every record accounted for.

Issue 10 (Deliver 9) asks whether the relay keeps its promises over a long
run, not just in the short scenarios of the integration tests: `records`
delivery records across `domains` recipient domains (the first five
rate-limited below what they would otherwise get), with bounces, greylisting,
suppressed addresses and poison records mixed in (the plan:
`bench/soak_model.py`), consumed by `relays` real `mailpipe relay` processes
from real Kafka, MX hosts from dnsmasq, recording receivers on loopback
addresses. At the end every record must have exactly one final disposition
(ARCHITECTURE.md, "Nothing lost"), the group's lag be 0 on every topic the relays
consume, and each relay's RSS (sampled every second) stay under a ceiling
without growing through the second half.

`run_soak()` is used by `tests/soak/test_soak.py` (short) and by
`python -m bench.soak` (`make bench-soak`: 200,000 records, writes
bench/results/soak.json with the RSS curves and the final lag).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from kafka import KafkaProducer

from mailpipe.contracts.config import EgressIP, RelayConfig, RetrySettings, Throttle
from mailpipe.contracts.topics import pool_prefix
from mailpipe.contracts.wire import Suppression, SuppressionReason, encode
from mailpipe.devstack import harness, samples
from mailpipe.devstack.dns import Zone
from mailpipe.devstack.stack import Stack
from mailpipe.kafkakit import end_offsets, ensure_pool_topics

from .common import write_result
from .soak_model import (
    BAD_DOMAINS,
    DLQ_POISON,
    FAR_FUTURE_NOT_BEFORE,
    Plan,
    duplicate_receipts,
    max_per_window,
    observed_rate_per_minute,
    rss_verdict,
)
from .soak_probes import Outcome, RSSSampler, group_members, read_lag, receivers
from .soak_report import SoakReport

FULL_RECORDS = 200_000
FULL_DOMAINS = 50
LIMITED_DOMAINS = 5
# 4,000 records a domain at 600/min take 400 s: longer than the other 45 domains
# need on this machine, so the limit binds for most of the run.
FULL_LIMIT_PER_MINUTE = 600.0
RECEIVER_HOSTS = [f"127.0.0.{n}" for n in range(40, 45)]  # 10 domains each
PARTITIONS = 8  # two relays, four partitions each
DELAY_STEPS = ("5s", "1m")
RETRY = RetrySettings(schedule_seconds=[5], max_age_seconds=86_400)  # greylisted: 5 s later
EGRESS = EgressIP(address="127.0.0.2", helo="soak.sender.test")
BODY_BYTES = 512  # a short newsletter; the soak is about records, not MIME size
STALL_SECONDS = 180.0  # no new disposition for this long: stalled (the 1m step plus slack)
GROUP_JOIN_SECONDS = 120.0
LAG_SETTLE_SECONDS = 60.0  # relays commit on an interval; lag reaches 0 within it
PRODUCER_LINGER_MS = 20
STATE_MARK = "state: "  # the relay's `kill -USR1` log line (relay main, dump_state)
STATE_DUMP_SECONDS = 10.0
STATE_DUMP_CHARS = 20_000  # the engine's and consumer's state
TASKS_MARK = "; tasks: "  # what follows it (asyncio task stacks) stays in the relay's log
PROGRESS_SECONDS = 30.0  # a line on stdout this often: a long run shows it is moving


def _zones(plan: Plan) -> list[Zone]:
    zones = []
    for i, domain in enumerate(plan.domain_names):
        mx = f"mx.{domain}"
        zones.append(Zone(domain, mx=((mx, 10),), a={mx: RECEIVER_HOSTS[i % len(RECEIVER_HOSTS)]}))
    return zones


def _config(bootstrap: str, dns_port: int, smtp_port: int, plan: Plan, limit: float) -> RelayConfig:
    prefix = pool_prefix(f"soak{int(time.time())}", "pool")  # a fresh namespace per run
    return samples.relay_config(
        "bench/soak",
        samples.pool_topics(bootstrap, prefix, DELAY_STEPS),
        [EGRESS],
        retry=RETRY,
        smtp_port=smtp_port,
        dns_nameserver=f"127.0.0.1:{dns_port}",
        throttles={d: Throttle(messages_per_minute=limit) for d in plan.limited_domains},
    )


def _produce(config: RelayConfig, plan: Plan) -> None:
    """Suppressions first (the relays follow them), then records and poison, keyed by domain."""
    producer = KafkaProducer(
        bootstrap_servers=config.kafka.bootstrap_servers, acks="all", linger_ms=PRODUCER_LINGER_MS
    )
    try:
        for address in plan.suppressed():
            value = Suppression(
                address=address, reason=SuppressionReason.UNSUBSCRIBE, time=time.time()
            )
            producer.send(
                config.kafka.suppressions_topic, key=address.encode(), value=encode(value)
            )
        producer.flush()
        outbound = config.kafka.outbound_topic
        poison = plan.poison_positions()
        body = "x" * BODY_BYTES
        for i in range(plan.records):
            for n, kind in enumerate(poison.get(i, ())):
                _send_poison(producer, outbound, plan, kind, f"poison-{i}-{n}-{kind}", body)
            record = samples.delivery_record(
                plan.recipient(i), id=plan.record_id(i), campaign="bench/soak", text=body
            )
            samples.send_record(producer, outbound, record)
        producer.flush()
    finally:
        producer.close()


def _send_poison(
    producer: KafkaProducer, topic: str, plan: Plan, kind: str, id: str, body: str
) -> None:
    key = plan.domain_names[0].encode()  # beside regular records of a (limited) domain
    if kind in DLQ_POISON:
        producer.send(topic, key=key, value=DLQ_POISON[kind])
    elif kind == "far_future":
        value = encode(samples.delivery_record(f"{id}@{plan.domain_names[1]}", id=id, text=body))
        value = value.replace(
            b'"created_at"', b'"not_before":%r,"created_at"' % FAR_FUTURE_NOT_BEFORE
        )
        producer.send(topic, key=key, value=value)
    else:  # bad_domain_<n>: the DNS library cannot ask about it
        domain = BAD_DOMAINS[int(kind.rsplit("_", 1)[1])]
        # a local part of its own: a second copy to the same address would be
        # suppressed (the first one's hard bounce), not bounced
        record = samples.delivery_record(f"{id}@{domain}", id=id, text=body)
        samples.send_record(producer, topic, record)


def run_soak(
    stack: Stack,
    workdir: Path,
    records: int = FULL_RECORDS,
    domains: int = FULL_DOMAINS,
    relays: int = 2,
    limit_per_minute: float = FULL_LIMIT_PER_MINUTE,
    timeout_seconds: float = 3600.0,
) -> SoakReport:
    """Run one soak on a running stack; returns the report (check `problems()`)."""
    state = stack.state
    assert state is not None, "the stack is not running"
    plan = Plan(records=records, domains=domains, limited=LIMITED_DOMAINS)
    report = SoakReport(
        records=records,
        produced=plan.produced,
        domains=domains,
        limited_domains=plan.limited_domains,
        limit_per_minute=limit_per_minute,
        limit_lanes=Throttle().max_connections,  # the limited domains keep the default
        relays=relays,
        expected=dict(plan.expected()),
    )
    stack.set_dns(_zones(plan))
    try:
        with receivers(RECEIVER_HOSTS) as (port, handlers), harness.Children(workdir) as children:
            config = _config(state.kafka_bootstrap, state.dns_port, port, plan, limit_per_minute)
            path = samples.write_config(config, workdir / "relay.yaml")
            ensure_pool_topics(config.kafka, partitions=PARTITIONS)
            started = [
                children.mailpipe(
                    f"relay-{n}", ["relay", "--config", str(path), "--relay-id", f"relay-{n}"]
                )
                for n in range(relays)
            ]
            sampler = RSSSampler(started)
            harness.wait_for(
                lambda: group_members(state.kafka_bootstrap, config.kafka.group_id) == relays,
                GROUP_JOIN_SECONDS,
                f"{relays} relays in the group",
                watch=started,
            )
            outcome = Outcome(config)
            t0 = time.monotonic()
            _produce(config, plan)
            report.stalled = _follow(outcome, plan, started, t0, timeout_seconds)
            report.seconds = round(time.monotonic() - t0, 1)
            sampler.stop()
            lag, uncommitted = _settled_lag(config, outcome, started)
            report.delay_topic_records = {
                str(step): sum(end_offsets(state.kafka_bootstrap, topic).values())
                for step, topic in config.kafka.delay_topics.items()
            }
            for child in started:
                child.request_stop()
            for child in started:
                child.stop()
                report.relay_exits[child.name] = child.returncode
            outcome.drain()  # anything written while stopping (a duplicate would show here)
            outcome.close()
            received = sum((h.received for h in handlers), Counter())
            arrivals = {d: t for h in handlers for d, t in h.times.items()}
        _fill(report, plan, outcome, received, arrivals, lag, uncommitted, sampler)
    finally:
        stack.set_dns([])
    return report


def _follow(
    outcome: Outcome, plan: Plan, relays: list[harness.Child], t0: float, timeout_seconds: float
) -> str | None:
    """Poll the outcome until every record is accounted; why not, if it stopped early."""
    accounted, progress_at, report_at = -1, time.monotonic(), time.monotonic()
    while outcome.tally.accounted < plan.produced:
        outcome.poll()
        now = time.monotonic()
        for r in relays:
            if not r.alive():
                return f"{r.describe()} exited ({r.exit_code()}):\n{r.log_tail()}"
        if outcome.tally.accounted != accounted:
            accounted, progress_at = outcome.tally.accounted, now
        if now >= report_at:
            report_at = now + PROGRESS_SECONDS
            print(f"soak: {now - t0:.0f} s, {accounted}/{plan.produced} records accounted")
        elif now - progress_at > STALL_SECONDS:
            states = "\n".join(_state_dump(r) for r in relays)
            return (
                f"no new disposition for {STALL_SECONDS:.0f} s at {accounted}/{plan.produced}"
                f"\n{states}"
            )
        if now - t0 > timeout_seconds:
            return f"not done after {timeout_seconds:.0f} s: {accounted}/{plan.produced}"
    return None


def _state_dump(relay: harness.Child) -> str:
    """What a stalled relay is doing (`kill -USR1`: its engine's and consumer's state),
    for the failure message: the test's temporary directory, with the relay's log,
    does not outlive the run."""
    before = relay.log.read_text(errors="replace").count(STATE_MARK)
    relay.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + STATE_DUMP_SECONDS
    while time.monotonic() < deadline:
        lines = [
            line
            for line in relay.log.read_text(errors="replace").splitlines()
            if STATE_MARK in line
        ]
        if len(lines) > before:
            state = lines[-1].split(TASKS_MARK, 1)[0]  # the task stacks are long; cut
            return f"{relay.describe()}: {state[:STATE_DUMP_CHARS]}"
        time.sleep(0.1)
    return f"{relay.describe()}: no state dump within {STATE_DUMP_SECONDS:.0f} s"


def _settled_lag(
    config: RelayConfig, outcome: Outcome, relays: list[harness.Child]
) -> tuple[dict[str, int], list[str]]:
    """Lag while the relays still run (they commit on an interval), once it is 0 or after
    LAG_SETTLE_SECONDS; the outcome keeps being followed meanwhile."""
    deadline = time.monotonic() + LAG_SETTLE_SECONDS
    while True:
        lag, uncommitted = read_lag(config)
        if (not any(lag.values()) and not uncommitted) or time.monotonic() > deadline:
            return lag, uncommitted
        outcome.poll()


def _fill(
    report: SoakReport,
    plan: Plan,
    outcome: Outcome,
    received: Counter[str],
    arrivals: dict[str, list[float]],
    lag: dict[str, int],
    uncommitted: list[str],
    sampler: RSSSampler,
) -> None:
    tally = outcome.tally
    report.msgs_per_s = round(plan.produced / report.seconds, 1) if report.seconds else 0.0
    unlimited = [
        t for d, times in tally.event_times.items() if d not in plan.limited_domains for t in times
    ]
    if len(unlimited) > 1:  # the rate the limits do not set: first to last delivery
        report.unlimited_msgs_per_s = round(
            (len(unlimited) - 1) / (max(unlimited) - min(unlimited)), 1
        )
    report.dispositions = dict(tally.dispositions())
    report.deferred_events = tally.deferred
    report.duplicate_events = tally.duplicate_events()
    report.duplicate_receipts = duplicate_receipts(received)
    report.delivered_without_receipt = len(set(outcome.delivered_to) - set(received))
    report.receipts_without_event = len(set(received) - set(outcome.delivered_to))
    report.dlq_reasons = tally.dlq_reasons
    report.limited_max_per_minute = {
        d: max_per_window(arrivals.get(d, [])) for d in plan.limited_domains
    }
    report.limited_rates_per_minute = {
        d: _rounded(observed_rate_per_minute(arrivals.get(d, []))) for d in plan.limited_domains
    }
    report.final_lag = lag
    report.uncommitted = uncommitted
    for name, curve in sampler.curves.items():
        verdict = rss_verdict(curve)
        report.rss[name] = {**vars(verdict), "curve": curve}


def _rounded(rate: float | None) -> float | None:
    return None if rate is None else round(rate, 1)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the stack and the relays started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=FULL_RECORDS)
    parser.add_argument("--domains", type=int, default=FULL_DOMAINS)
    parser.add_argument("--relays", type=int, default=2)
    parser.add_argument("--limit-per-minute", type=float, default=FULL_LIMIT_PER_MINUTE)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-soak-"))
    print(
        f"bench soak: {args.records} records, {args.domains} domains, "
        f"{args.relays} relays, in {workdir}"
    )
    stack = Stack(workdir / "stack")
    stack.up()
    try:
        report = run_soak(
            stack, workdir, args.records, args.domains, args.relays, args.limit_per_minute
        )
    finally:
        stack.down()
    problems = report.problems()
    write_result("soak", {**report.as_dict(), "problems": problems})
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
