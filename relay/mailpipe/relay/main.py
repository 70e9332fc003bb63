"""`mailpipe relay`: one relay process, wired from its config file.

Start-up order matters for the invariants: the suppression list and the
warm-up ledger are replayed to the end of their topics *before* the consumer
joins the group, so no record is sent to a suppressed address or over an IP's
cap because the relay had not caught up yet. The config file (the mounted
ConfigMap) is re-read when it changes; shaping, warm-up, retry, TLS and route
changes apply in place, without dropping queued work. With the operator's
public key (`--config-public-key`, set by the relay Deployment), only a config
the operator signed is used, at start and on reload (`config_file`). The metrics port also
answers `/readyz` and `/healthz` (`health.Health`): a consumer thread that
cannot read, or a follower that stopped, says so there with its reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from mailpipe.contracts.config import ConfigError, KafkaSettings, RelayConfig
from mailpipe.contracts.logformat import JSONFormatter
from mailpipe.contracts.signing import PUBLIC_KEY_ENV, StaleConfigError, UntrustedConfigError
from mailpipe.contracts.site_actions import SiteActions
from mailpipe.contracts.suppressions import CampaignStates, SuppressionList
from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.endpoints import ScrapeEndpoint
from mailpipe.kafkakit import (
    KafkaAccessError,
    TopicFollower,
    ensure_pool_topics,
    partition_count,
    probe_access,
)

from .clock import SystemClock
from .config_file import (
    CONFIG_CHECK,
    ConfigFile,
    metrics_port_of,
    refusal_reporter,
    verifier_from_env,
    wait_until_trusted,
)
from .delivery import SMTPTransport
from .egress import EgressCheck, wait_until_bindable
from .engine import Engine, task_stacks
from .health import Health
from .kafka import KafkaError, KafkaSink, KafkaSource, relay_followers
from .metrics import DomainLabels, RelayMetrics

log = logging.getLogger("mailpipe.relay")

CONFIG_POLL_SECONDS = 2.0  # kubelet refreshes mounted ConfigMaps within about a minute anyway
CLOCK_OFFSET_ENV = "MAILPIPE_CLOCK_OFFSET_SECONDS"
REASON_CHARS = 200  # of an exception's text in a readiness reason
CONSUMER_CHECK = "kafka consumer"  # the readiness check of reading the pool's topics
ACCESS_CHECK = "kafka access"  # the readiness check of logging in and being authorized
# A refused login or ACL is a configuration problem: asked again at this pace
# (the Secret or the ACLs may be fixed meanwhile), never a crash loop.
ACCESS_RETRY_SECONDS = 15.0
# After a rebalance, capped sends wait for the events topic to be read to its
# end; a read that takes longer than this is logged and tried again.
SETTLE_TIMEOUT_SECONDS = 30.0
ACCESS_REASON_CHARS = 400  # an access reason names the principal, the topic and the fix
# Set by the relay Deployment to the pod IP (the node's primary address under
# hostNetwork), so the metrics endpoint never listens on the pool's egress IPs.
METRICS_ADDRESS_ENV = "MAILPIPE_METRICS_ADDRESS"
# Where a relay run outside a pod answers /readyz while it waits for a config it
# trusts: nobody but the machine itself probes such a relay.
WAITING_METRICS_ADDRESS = "127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="relay config file (YAML)")
    parser.add_argument(
        "--relay-id", default=None, help="id in events (default: host name + random)"
    )
    parser.add_argument("--log-level", default=os.environ.get("MAILPIPE_LOG_LEVEL", "info"))
    parser.add_argument(
        "--ensure-topics",
        action="store_true",
        help="create missing topics at start (dev and tests; the operator does it in a cluster)",
    )
    parser.add_argument(
        "--config-public-key",
        default=os.environ.get(PUBLIC_KEY_ENV),
        help=f"base64 Ed25519 public key of the operator (default: ${PUBLIC_KEY_ENV});"
        " when set, a config without the operator's signature in <config>.sig is refused",
    )


def run(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        config_file = ConfigFile(args.config, verifier_from_env(args.config_public_key))
        first: RelayConfig | UntrustedConfigError = config_file.load()
    except UntrustedConfigError as exc:
        first = exc  # not the operator's: wait, not ready, for one that is (serve)
    except (ConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    relay_id = args.relay_id or f"{os.uname().nodename}-{uuid.uuid4().hex[:6]}"
    # uvloop: the event loop's own work (callbacks, socket reads and writes)
    # in C; about 6% less CPU per message than asyncio's loop (bench/relay.py,
    # pipeline mode, the two alternated in one sitting).
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(serve(first, config_file, relay_id, ensure=args.ensure_topics))
    return 0


async def serve(
    first: RelayConfig | UntrustedConfigError,
    config_file: ConfigFile,
    relay_id: str,
    ensure: bool = False,
) -> None:
    """Run the relay; `first` is the config read at start, or why it was refused."""
    loop = asyncio.get_running_loop()
    # Test-only: shift the wall clock so warm-up days can be crossed without waiting.
    clock = SystemClock(float(os.environ.get(CLOCK_OFFSET_ENV, "0")))
    health = Health()
    if isinstance(first, UntrustedConfigError):
        config = await _wait_for_trusted_config(config_file, first, health)
    else:
        config = first
    metrics = RelayMetrics(
        domains=DomainLabels(
            lambda d: d if d in config.throttles else config.group_of(d),
            config.metrics_domain_labels,
        )
    )
    endpoint = None
    if config.metrics_port:
        address = os.environ.get(METRICS_ADDRESS_ENV) or config.metrics_address
        endpoint = await ScrapeEndpoint(
            metrics.registry, address, config.metrics_port, probes=health.probes()
        ).start()
    # Asked at every readiness probe from here on: a relay that cannot send
    # from its IPs is not Ready, whatever else works.
    egress = EgressCheck(e.address for e in config.egress)
    egress.register(health)
    if ensure:
        await loop.run_in_executor(None, ensure_pool_topics, config.kafka)
    await wait_for_kafka_access(config.kafka, health)
    # No record read before every egress IP can be bound: read, they would
    # all be deferred at connect time; left on Kafka, other relays take them.
    await wait_until_bindable(egress)

    sink = await loop.run_in_executor(None, KafkaSink, config.kafka)
    topics = [config.kafka.outbound_topic, *config.kafka.delay_topics.values()]
    await loop.run_in_executor(
        None,
        sink.prefetch,
        [
            *topics,
            config.kafka.events_topic,
            config.kafka.dlq_topic,
            config.kafka.suppressions_topic,
        ],
    )

    followed = await _follow(config, relay_id, metrics, health)
    metrics.suppressions_held.set_function(lambda: len(followed.suppressions))
    transport = SMTPTransport(config, metrics=metrics)
    [events] = [f for f in followed.followers if f.topic == config.kafka.events_topic]
    source = await _consumer(config, topics, followed.ledger, events, metrics, health)
    engine = Engine(
        config,
        source,
        sink,
        transport,
        suppressions=followed.suppressions,
        ledger=followed.ledger,
        clock=clock,
        metrics=metrics,
        relay_id=relay_id,
        campaigns=followed.campaigns,
        sites=transport.mx,
        site_actions=followed.site_actions,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def dump_state() -> None:  # `kill -USR1 <relay>`: what is it doing?
        log.warning(
            "state: %s; source: %s; tasks: %s",
            json.dumps(engine.describe()),
            json.dumps(source.describe()),
            task_stacks(asyncio.all_tasks(), limit=1000),
        )

    loop.add_signal_handler(signal.SIGUSR1, dump_state)
    source.start()
    reloader = asyncio.create_task(
        _watch_config(
            config_file, engine, transport, stop, health, refusal_reporter(health, metrics), egress
        )
    )
    log.info("relay started", extra={"relay_id": relay_id, "pool": config.pool})
    try:
        await engine.run(stop)  # returns after its final commit: the only one on shutdown
    finally:
        log.info("stopping: engine drained", extra={"relay_id": relay_id})
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader
        await _close(relay_id, source, transport, sink, followed.followers, endpoint)


@dataclass
class _Followed:
    """What the relay must know before it may send, kept current by followers."""

    suppressions: SuppressionList
    ledger: WarmupLedger
    campaigns: CampaignStates
    followers: list[TopicFollower]
    site_actions: SiteActions = field(default_factory=SiteActions)  # the pool's, from events


async def _follow(
    config: RelayConfig, relay_id: str, metrics: RelayMetrics, health: Health
) -> _Followed:
    """Replay the followed topics (suppressions, warm-up, campaign states) to their
    end, then keep following them; each follower watched by the liveness probe."""
    followed = _Followed(SuppressionList(), WarmupLedger(config, relay_id), CampaignStates(), [])
    followed.followers = relay_followers(
        config.kafka,
        relay_id,
        suppressions=followed.suppressions,
        ledger=followed.ledger,
        campaigns=followed.campaigns,
        metrics=metrics,
        actions=followed.site_actions,
    )
    for f in followed.followers:
        f.start()
        # A follower that stopped leaves its list stale (suppressions!): not live.
        health.watch(f"follower {f.topic}", _follower_check(f))
    for f in followed.followers:
        await f.wait_caught_up()
    count = len(followed.suppressions)
    log.info("caught up: %d suppressions", count, extra={"relay_id": relay_id})
    return followed


async def _consumer(
    config: RelayConfig,
    topics: list[str],
    ledger: WarmupLedger,
    events: TopicFollower,
    metrics: RelayMetrics,
    health: Health,
) -> KafkaSource:
    """The consumer-group member (not started): its lag, errors and owned share of
    the outbound partitions (what the warm-up caps are divided by) reported; after
    each rebalance, capped sends wait until the events topic was read past it
    (the warm-up usage the other relays wrote when it started)."""

    def on_lag(tp: Any, lag: int) -> None:
        metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    outbound = config.kafka.outbound_topic
    # Read once: the share of warm-up caps follows partitions owned out of these.
    loop = asyncio.get_running_loop()
    partitions = await loop.run_in_executor(None, partition_count, config.kafka, outbound)

    rebalances = itertools.count(1)
    latest = 0
    settling: set[asyncio.Task[None]] = set()

    async def settle(rebalance: int) -> None:
        while True:
            try:
                await events.read_past_now(SETTLE_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("warm-up budgets wait for %s to be read", events.topic)
                continue
            except RuntimeError:
                return  # the follower failed: the liveness probe says so; stay held
            if rebalance == latest:  # a later rebalance settles itself
                ledger.release()
            return

    def on_assigned(tps: set[Any]) -> None:
        nonlocal latest
        mine = sorted(tp.partition for tp in tps if tp.topic == outbound)
        ledger.set_share(len(mine) / partitions if partitions else 1.0)
        ledger.hold()
        latest = next(rebalances)
        task = loop.create_task(settle(latest))
        settling.add(task)
        task.add_done_callback(settling.discard)
        log.info("assigned %d of %d outbound partitions: %s", len(mine), partitions, mine)

    source = KafkaSource(
        config.kafka,
        topics,
        on_lag=on_lag,
        on_assigned=on_assigned,
        on_error=read_error_reporter(metrics, health),
        buffer_records=config.kafka.max_in_flight_records,
    )
    health.watch("kafka consumer thread", source.thread_error)
    return source


async def _close(
    relay_id: str,
    source: KafkaSource,
    transport: SMTPTransport,
    sink: KafkaSink,
    followers: list[TopicFollower],
    endpoint: ScrapeEndpoint | None,
) -> None:
    """Close in order, after the engine's final commit: the consumer (leaves the
    group), SMTP connections, the producer (flushed), the followers, /metrics."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, source.stop)
    log.info("stopping: consumer closed", extra={"relay_id": relay_id})
    await transport.close()
    await sink.flush()
    await loop.run_in_executor(None, sink.close)
    log.info("stopping: producer closed", extra={"relay_id": relay_id})
    await asyncio.gather(*(loop.run_in_executor(None, f.stop) for f in followers))
    if endpoint is not None:
        await endpoint.stop()
    log.info("relay stopped", extra={"relay_id": relay_id})


async def wait_for_kafka_access(settings: KafkaSettings, health: Health) -> None:
    """Return once this relay's identity may log in and use its topics and group.

    Until then readiness is false with the reason (the credential file that is
    missing, the refused login, the topic or group the ACLs refuse), logged
    once per attempt, and nothing else is started: no client keeps retrying a
    refused login in the background, no follower dies on a refused topic,
    and the relay does not exit into a crash loop (issue 11)."""
    loop = asyncio.get_running_loop()
    topics = [
        settings.outbound_topic,
        *settings.delay_topics.values(),
        settings.events_topic,
        settings.dlq_topic,
        settings.suppressions_topic,
        settings.control_topic,
        *settings.obeyed_suppressions_topics,
    ]
    while True:
        try:
            await loop.run_in_executor(None, probe_access, settings, topics, settings.group_id)
        except (KafkaError, KafkaAccessError) as exc:
            text = str(exc)
            name = type(exc).__name__
            reason = (text if text.startswith(name) else f"{name}: {text}")[:ACCESS_REASON_CHARS]
            health.report(ACCESS_CHECK, reason)
            log.error("cannot use Kafka as %s: %s", settings.security, reason)
            await asyncio.sleep(ACCESS_RETRY_SECONDS)
            continue
        health.resolve(ACCESS_CHECK)
        return


def read_error_reporter(metrics: RelayMetrics, health: Health) -> Callable[[BaseException], None]:
    """What the consumer thread calls when it fails to read: counted by error
    type, and readiness false with the reason (see `health`)."""

    def report(exc: BaseException) -> None:
        metrics.consumer_errors.labels(type(exc).__name__).inc()
        health.report(CONSUMER_CHECK, f"{type(exc).__name__}: {str(exc)[:REASON_CHARS]}")

    return report


def _follower_check(follower: TopicFollower) -> Callable[[], str | None]:
    def check() -> str | None:
        error = follower.error
        return None if error is None else f"{type(error).__name__}: {error}"

    return check


async def _wait_for_trusted_config(
    source: ConfigFile, first: UntrustedConfigError, health: Health
) -> RelayConfig:
    """At start, the config on disk is not the operator's: answer `/readyz` (not
    ready, with the reason) and count it until one the relay trusts appears."""
    metrics = RelayMetrics()  # the waiting relay's own; the running one starts afresh
    refused = refusal_reporter(health, metrics)
    refused(first)
    port = metrics_port_of(source.path)
    endpoint = None
    if port is not None:
        # The pod IP in a cluster; never an address from the untrusted file.
        address = os.environ.get(METRICS_ADDRESS_ENV) or WAITING_METRICS_ADDRESS
        endpoint = await ScrapeEndpoint(
            metrics.registry, address, port, probes=health.probes()
        ).start()
    try:
        return await wait_until_trusted(source, first, health, CONFIG_POLL_SECONDS, refused)
    finally:
        if endpoint is not None:
            await endpoint.stop()


async def _watch_config(
    source: ConfigFile,
    engine: Engine,
    transport: SMTPTransport,
    stop: asyncio.Event,
    health: Health,
    refused: Callable[[UntrustedConfigError], None],
    egress: EgressCheck,
) -> None:
    """Apply a changed config in place; one the operator did not sign is refused
    (the running config stays, and readiness says why until a trusted one is
    back: re-reported every poll, so it does not age out). With the pod's
    config digest set (in a cluster), any other text is refused: a relay runs
    the config its pod was rolled for, and a newer one arrives as a new pod."""
    refusal: UntrustedConfigError | None = None
    while not stop.is_set():
        await asyncio.sleep(CONFIG_POLL_SECONDS)
        if source.stamp() == source.read:  # as read at start or at the last change
            if refusal is not None:
                health.report(CONFIG_CHECK, str(refusal))
            continue
        try:
            config = source.load()
        except StaleConfigError as exc:
            refused(exc)  # the operator's, for another pod: no alarm, and no tampering now
            if refusal is not None:
                refusal = None
                health.resolve(CONFIG_CHECK)
            continue
        except UntrustedConfigError as exc:
            refusal = exc
            refused(exc)
            continue
        except (ConfigError, OSError) as exc:
            log.error("keeping the running config; the new one is invalid: %s", exc)
            continue
        if refusal is not None:
            refusal = None  # the operator's config is back (the same or a newer one)
            health.resolve(CONFIG_CHECK)
            log.info("the relay config on disk is the operator's again")
        if config.kafka != engine.config.kafka:
            # Topics and the group are bound to the running consumer and producer,
            # and the rest must not apply without them: new routes with the old
            # suppression topic would let routed bounces suppress namespace-wide
            # (issue 11). The operator rolls the relays on any config change.
            log.warning("Kafka settings changed: the new config applies at the next restart")
            continue
        try:
            engine.reconfigure(config)  # all or nothing (see Engine.reconfigure)
        except Exception as exc:
            log.error("keeping the running config; the new one cannot be applied: %s", exc)
            continue
        transport.reconfigure(config)
        egress.addresses = [e.address for e in config.egress]
        log.info("config reloaded", extra={"pool": config.pool})
