"""The feedback receiver: an SMTP server (aiosmtpd) for the pool's bounce domain.

It is the MX of the bounce domain and nothing else. At RCPT it takes only

- `b-<token>@<bounce domain>`, a VERP Return-Path whose token verifies (this
  pool, this namespace, a key still held, not expired, made for bounces),
- `u-<token>@<bounce domain>`, the List-Unsubscribe mailto (RFC 2369) whose
  token verifies as made for unsubscribing: a person's mail to it writes the
  same suppression and `unsubscribed` event as the one-click endpoint (a
  report, a bounce or an automatic reply to it unsubscribes nobody), and
- `<fbl local part>@<bounce domain>`, the address given to providers'
  feedback loops (their ARF reports are attributed by the tokens quoted in
  the original message, checked after DATA);

every other recipient is refused at RCPT with a reply that says why (another
domain: relaying denied; a forged, tampered, expired or foreign token), so
it never relays and never accepts mail it would have to bounce. Messages
over `max_message_bytes` are refused (552) at MAIL (SIZE) or at the end of
DATA. What a message means is `feedback.Receiver.decide`; this module does
the IO: events and suppressions to the pool's topics, anything unusable to
the DLQ with its reason, all acknowledged by Kafka before the 250 (a 451
otherwise, so the sending MTA retries and nothing is lost).

Counted in Prometheus metrics whose labels are fixed words (kinds, token and
report reasons), never text from a message.

    mailpipe feedback --config relay-config.yaml
    python -m mailpipe.inbound.feedback_server --config relay-config.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, AnyStr, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import CollectorRegistry, Counter

from mailpipe.contracts.bounces import classifier_for
from mailpipe.contracts.config import ConfigError, FeedbackSettings, RelayConfig, load_config
from mailpipe.contracts.feedback_token import (
    BOUNCE_PREFIX,
    UNSUBSCRIBE_PREFIX,
    Purpose,
    TokenError,
    keys_from_directory,
    token_of_address,
)
from mailpipe.contracts.wire import encode, suppression_key
from mailpipe.endpoints import ScrapeEndpoint

from .feedback import Kind, Outcome, Receiver
from .kafka_io import AckedProducer

log = logging.getLogger("mailpipe.inbound.feedback")

MAX_RECIPIENTS = 10  # per transaction: a report goes to one return path
# Sessions at once: MTAs send a pool's reports over a few connections each; a
# flood beyond this is answered 421 at once and costs nothing more.
MAX_SESSIONS = 200
# Idle seconds before a session is dropped (aiosmtpd's default is 300): a held
# connection that sends nothing must not keep a session slot for long.
IDLE_TIMEOUT_SECONDS = 60
DLQ_COPY_BYTES = 64 * 1024  # of a set-aside message kept in its DLQ copy
# How long one report's records may take to be acknowledged before the sender
# is told to try again (451): well under an MTA's DATA-reply timeout (10 min,
# RFC 5321 4.5.3.2.6), long enough for a leader election.
ACK_TIMEOUT_SECONDS = 30.0
# How long a send may wait for a topic's metadata (kafka-python's max_block_ms).
METADATA_WAIT_MS = 10_000
SECONDS_PER_DAY = 86_400


def _token_replies(what: str, article: str) -> Mapping[str, str]:
    """A refused token's reply per reason, for an address that is `what`: fixed
    texts, so the reply never echoes what another namespace's token said (names
    of other tenants)."""
    return MappingProxyType(
        {
            "malformed": f"550 5.1.1 {{rcpt}}: no such {what} (not a token of this pool)",
            "forged": f"550 5.7.1 {{rcpt}}: {what} signature does not verify (forged or tampered)",
            "expired": f"550 5.1.1 {{rcpt}}: {what} expired",
            "foreign": f"550 5.7.1 {{rcpt}}: {what} of another namespace or pool",
            "purpose": f"550 5.7.1 {{rcpt}}: token is not {article} {what}",
            "unknown_key": f"550 5.7.1 {{rcpt}}: {what} signed with a key no longer held",
        }
    )


# The token addresses the receiver takes: local-part prefix -> (purpose, replies).
TOKEN_ADDRESSES: Mapping[str, tuple[Purpose, Mapping[str, str]]] = MappingProxyType(
    {
        BOUNCE_PREFIX: (Purpose.BOUNCE, _token_replies("return path", "a")),
        UNSUBSCRIBE_PREFIX: (Purpose.UNSUBSCRIBE, _token_replies("unsubscribe address", "an")),
    }
)


class Sink(Protocol):
    """Produces (topic, key, value) items and returns once Kafka acknowledged all."""

    async def produce(self, items: Sequence[tuple[str, bytes | None, bytes]]) -> None: ...


class FeedbackMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.refused = Counter(
            "mailpipe_feedback_refused",
            "Recipients or messages refused by the feedback receiver, by SMTP stage and"
            " reason (foreign_domain, no_token, forged, expired, foreign, too_large...)",
            ["stage", "reason"],
            registry=self.registry,
        )
        self.messages = Counter(
            "mailpipe_feedback_messages",
            "Messages taken by the feedback receiver, by what they were (bounce, delay,"
            " complaint, unsubscribe, auto_reply, ignored, set_aside) and a fixed reason",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.produced = Counter(
            "mailpipe_feedback_produced",
            "Records the feedback receiver produced, by kind (event disposition,"
            " suppression reason, dlq)",
            ["record"],
            registry=self.registry,
        )
        self.kafka_failures = Counter(
            "mailpipe_feedback_kafka_failures",
            "Messages answered 451 because Kafka did not acknowledge their records",
            registry=self.registry,
        )


class FeedbackHandler:
    """aiosmtpd handler: the RCPT policy and the DATA decision."""

    def __init__(
        self,
        receiver: Receiver,
        settings: FeedbackSettings,
        topics: tuple[str, str, str],  # events, suppressions, dlq
        sink: Sink,
        metrics: FeedbackMetrics,
        clock: Callable[[], float] = time.time,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.receiver = receiver
        self.max_sessions = max_sessions
        self.sessions = 0  # open now (counted by `_CountingSMTP`)
        self.domain = settings.bounce_domain.lower()
        self.fbl = f"{settings.fbl_local_part}@{self.domain}"
        self.events_topic, self.suppressions_topic, self.dlq_topic = topics
        self.sink = sink
        self.metrics = metrics
        self.clock = clock

    def _refuse(self, stage: str, reason: str, reply: str) -> str:
        self.metrics.refused.labels(stage, reason).inc()
        return reply

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        rcpt = f"<{address}>"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return self._refuse("rcpt", "too_many_recipients", "452 4.5.3 Too many recipients")
        domain = address.rpartition("@")[2].lower()
        if domain != self.domain:
            return self._refuse(
                "rcpt",
                "foreign_domain",
                f"550 5.7.1 {rcpt}: relaying denied: this host takes reports for"
                f" {self.domain} only",
            )
        if address.lower() != self.fbl:
            found = _token_address(address, self.domain)
            if found is None:
                return self._refuse(
                    "rcpt", "no_token", f"550 5.1.1 {rcpt}: no such mailbox (not a return path)"
                )
            token, purpose, replies = found
            try:
                self.receiver.check_token(token, purpose, self.clock())
            except TokenError as exc:
                reply = replies.get(exc.reason, replies["malformed"])
                return self._refuse("rcpt", exc.reason, reply.format(rcpt=rcpt))
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _decide(self, rcpt: str, data: bytes, mail_from: str, now: float) -> Outcome:
        """The decision for one accepted recipient: an unsubscribe at the mailto
        address, a report everywhere else. The token is checked again rather than
        kept from RCPT: an HMAC is cheaper than state that a dropped connection
        would leave behind."""
        found = _token_address(rcpt, self.domain)
        if rcpt.lower() == self.fbl or found is None:
            return self.receiver.decide(data, None, mail_from, now)
        token, purpose, _ = found
        try:
            payload = self.receiver.check_token(token, purpose, now)
        except TokenError as exc:  # expired since RCPT (or a key removed meanwhile)
            if purpose is Purpose.UNSUBSCRIBE:  # never read as a report
                return Outcome(Kind.SET_ASIDE, "unattributed", f"unsubscribe token: {exc}")
            return self.receiver.decide(data, None, mail_from, now)  # its quoted tokens may do
        if purpose is Purpose.UNSUBSCRIBE:
            return self.receiver.decide_unsubscribe(data, payload, mail_from, now)
        return self.receiver.decide(data, payload, mail_from, now)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":
            mail_from = ""
        now = self.clock()
        outcomes = [(rcpt, self._decide(rcpt, data, mail_from, now)) for rcpt in envelope.rcpt_tos]
        items: list[tuple[str, bytes | None, bytes]] = []
        produced: list[str] = []
        for rcpt, out in outcomes:
            for event in out.events:
                key = (event.campaign or event.message_id).encode()
                items.append((self.events_topic, key, encode(event)))
                produced.append(f"event_{event.disposition.value}")
            for sup in out.suppressions:
                # a list's entry has a key of its own (`suppression_key`)
                sup_key = suppression_key(sup.address, sup.list).encode()
                items.append((self.suppressions_topic, sup_key, encode(sup)))
                produced.append(f"suppression_{sup.reason.value}")
            if out.kind is Kind.SET_ASIDE:
                items.append((self.dlq_topic, None, dlq_copy(data, rcpt, mail_from, out)))
                produced.append("dlq")
        try:
            async with asyncio.timeout(ACK_TIMEOUT_SECONDS):
                await self.sink.produce(items)
        except Exception as exc:  # the producer's errors, whatever the client raises
            self.metrics.kafka_failures.inc()
            log.warning("report not recorded, answered 451: %s: %s", type(exc).__name__, exc)
            return "451 4.3.0 Report not recorded, try again later"
        for record in produced:
            self.metrics.produced.labels(record).inc()
        for _, out in outcomes:
            self.metrics.messages.labels(out.kind.value, out.reason).inc()
            if out.kind is Kind.SET_ASIDE:
                log.info("report set aside: %s: %s", out.reason, out.detail)
        kinds = ", ".join(sorted({out.kind.value for _, out in outcomes}))
        return f"250 2.0.0 OK: {kinds}"


def _token_address(address: str, domain: str) -> tuple[str, Purpose, Mapping[str, str]] | None:
    """(token, purpose, refusal replies) of a token address of `domain`, or None."""
    for prefix, (purpose, replies) in TOKEN_ADDRESSES.items():
        token = token_of_address(address, domain, prefix)
        if token:
            return token, purpose, replies
    return None


def dlq_copy(data: bytes, rcpt: str, mail_from: str, out: Outcome) -> bytes:
    """The DLQ value of a set-aside message: why, to whom, and the start of it."""
    kept = data[:DLQ_COPY_BYTES]
    value: dict[str, Any] = {
        "reason": f"{out.reason}: {out.detail}"[:2000],
        "receiver": "feedback",
        "rcpt_to": rcpt,
        "mail_from": mail_from,
        "value_bytes": len(data),
        "value_sha256": hashlib.sha256(data).hexdigest(),
        "truncated": len(kept) < len(data),
    }
    try:
        value["value"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        value["value_base64"] = base64.b64encode(kept).decode()
    return json.dumps(value).encode()


class _CountingSMTP(SMTP):
    """aiosmtpd's server, counting the 552s it writes itself (a SIZE over the
    limit at MAIL, too much data at DATA): no handler hook sees those; and
    answering 421 to a connection beyond `max_sessions` before anything else."""

    def __init__(self, handler: FeedbackHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._feedback = handler
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._counted or self._feedback.sessions < self._feedback.max_sessions:
            if not self._counted:  # (STARTTLS calls this again on the same session)
                self._counted = True
                self._feedback.sessions += 1
            super().connection_made(transport)
            return
        self._feedback.metrics.refused.labels("connect", "too_many_sessions").inc()
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
        transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if not self._counted:
            return  # refused in connection_made: aiosmtpd never set the session up
        self._counted = False
        self._feedback.sessions -= 1
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status.startswith("552"):
            stage = "mail" if "size exceeds" in status else "data"
            self._feedback.metrics.refused.labels(stage, "too_large").inc()
        await super().push(status)


def build_receiver(config: RelayConfig, receiver_id: str) -> Receiver:
    """The decision's context from the relay config; ValueError when the feedback
    settings are missing or the key Secret is not usable."""
    settings = config.feedback
    if settings is None:
        raise ValueError(
            f"pool {config.pool} has no feedback settings (spec.feedback.bounceDomain):"
            " nothing to receive"
        )
    namespace, _, pool = config.pool.partition("/")
    return Receiver(
        namespace=namespace,
        pool=pool,
        bounce_domain=settings.bounce_domain,
        keys=keys_from_directory(settings.keys_path),
        classifier=classifier_for(config.bounces),
        validity_seconds=settings.validity_days * SECONDS_PER_DAY,
        receiver_id=receiver_id,
    )


async def start_server(
    handler: FeedbackHandler, settings: FeedbackSettings, host: str | None = None
) -> asyncio.Server:
    """Listen on `host` (default: the settings' address) and the settings' port."""
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return _CountingSMTP(
            handler,
            data_size_limit=settings.max_message_bytes,
            hostname=settings.bounce_domain,
            ident="mailpipe feedback receiver",
            enable_SMTPUTF8=True,
            timeout=IDLE_TIMEOUT_SECONDS,
        )

    return await loop.create_server(factory, host or settings.listen_address, settings.listen_port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the pool's relay config")
    parser.add_argument("--log-level", default=os.environ.get("MAILPIPE_LOG_LEVEL", "info"))
    parser.add_argument("--receiver-id", default=None, help="names this process in events")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, force=True)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    receiver_id = args.receiver_id or f"feedback-{os.uname().nodename}"
    try:
        config = load_config(args.config)
        receiver = build_receiver(config, receiver_id)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"mailpipe feedback: cannot start: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, receiver))
    return 0


async def serve(config: RelayConfig, receiver: Receiver) -> None:
    settings = config.feedback
    assert settings is not None  # build_receiver checked
    loop = asyncio.get_running_loop()
    metrics = FeedbackMetrics()
    producer = AckedProducer(
        config.kafka, f"{config.kafka.client_id}-feedback", max_block_ms=METADATA_WAIT_MS
    )
    await producer.started()  # as before: the receiver does not start without Kafka
    kafka = config.kafka
    handler = FeedbackHandler(
        receiver,
        settings,
        (kafka.events_topic, kafka.suppressions_topic, kafka.dlq_topic),
        producer,
        metrics,
    )
    server = await start_server(handler, settings)
    endpoint = None
    if settings.metrics_port:
        endpoint = await ScrapeEndpoint(
            metrics.registry, settings.listen_address, settings.metrics_port
        ).start()
    log.info(
        "feedback receiver for %s on %s:%d",
        settings.bounce_domain,
        settings.listen_address,
        settings.listen_port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()
    if endpoint is not None:
        await endpoint.stop()
    await loop.run_in_executor(None, producer.close)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailpipe.inbound.feedback_server")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
