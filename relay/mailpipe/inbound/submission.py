"""`mailpipe submission`: the SMTP submission endpoint applications send through.

STARTTLS on one listener (587) and implicit TLS on another (465, RFC 8314),
both aiosmtpd. Who may send what is decided in `submission_policy`; this
module only speaks SMTP and waits for Kafka:

    EHLO -> STARTTLS -> AUTH (PLAIN/LOGIN, only over TLS: 538 5.7.11 before)
    MAIL FROM   sender domain allowed for the user (553 5.7.1), rate (450 4.7.1),
                SIZE (552 5.3.4); nothing before AUTH (530 5.7.0): never a relay
    RCPT TO     valid address, suppressed refused (550 5.7.1) or dropped
    DATA        size (552 5.3.4), From: domain allowed (550 5.7.1), UTF-8;
                records committed in one Kafka transaction -> 250,
                deadline passed -> 451 4.3.0 and nothing visible

Password checks run scrypt in a worker thread, so a login never stalls the
other sessions on the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from prometheus_client import CollectorRegistry, Counter, Histogram

from mailpipe.contracts.logformat import JSONFormatter
from mailpipe.contracts.submission_users import SubmissionUser
from mailpipe.contracts.suppressions import SuppressionList
from mailpipe.contracts.wire import encode
from mailpipe.endpoints import Probe, ScrapeEndpoint
from mailpipe.kafkakit import ensure_topics

from .submission_kafka import Outbox, OutboxUnavailable, suppression_followers
from .submission_policy import (
    MAX_RECIPIENTS_PER_MESSAGE,
    RateLimiter,
    Replies,
    Reply,
    SubmissionConfig,
    SubmissionConfigError,
    SuppressedRecipients,
    address_domain_allowed,
    build_records,
    check_login,
    hash_password,
    header_from_domains,
    message_key,
    parse_submission_config,
    parse_users,
    submission_id,
    valid_address,
)

log = logging.getLogger("mailpipe.inbound.submission")

READY_TIMEOUT_SECONDS = 120.0  # Kafka transactions and the lists read, before listening
# aiosmtpd's own size replies carry no enhanced code; RFC 3463 names 5.3.4.
_AIOSMTPD_REFUSALS_UNAUTHENTICATED = "530 5.7.0"  # aiosmtpd's auth_required, before our hooks
_AIOSMTPD_AUTH_NEEDS_TLS = "538 5.7.11"
_AIOSMTPD_TOO_BIG = ("552 Error: Too much mail data", "552 Error: message size exceeds fixed")


# Every word each counter may carry (bounded labels, each series at 0 from the
# start, so a dashboard's rate() sees the first refusal): this module's own
# words, never user names, addresses or domains.
REFUSAL_REASONS = (
    "unauthenticated",  # MAIL before AUTH (530): an attempt to relay
    "auth_before_tls",  # AUTH in clear (538)
    "bad_address",
    "sender_domain",  # MAIL FROM outside the user's domains
    "rate",
    "too_big",
    "too_many_recipients",
    "suppressed",
    "suppressed_dropped",  # accepted and left out, as the pool says
    "from_missing",  # no usable From: header: a message it cannot read
    "from_domain",
    "not_utf8",  # 8-bit bytes that are not UTF-8: a message it cannot read
    "bad_suppression",  # an undecodable record on a suppression list it follows
)
MESSAGE_OUTCOMES = ("accepted", "duplicate", "unavailable", "all_dropped")
LOGIN_RESULTS = ("ok", "refused")


class SubmissionMetrics:
    """Counters with bounded labels (`REFUSAL_REASONS`, `MESSAGE_OUTCOMES`,
    `LOGIN_RESULTS`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.logins = Counter(
            "mailpipe_submission_logins", "AUTH attempts by result", ["result"], registry=r
        )
        self.messages = Counter(
            "mailpipe_submission_messages",
            "Messages by outcome: accepted, duplicate, unavailable",
            ["outcome"],
            registry=r,
        )
        self.refused = Counter(
            "mailpipe_submission_refused",
            "Commands refused, by reason",
            ["reason"],
            registry=r,
        )
        self.records = Counter(
            "mailpipe_submission_records",
            "Delivery records committed to the outbound topic",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "mailpipe_submission_commit_seconds",
            "From end of DATA to Kafka's commit (or the deadline)",
            registry=r,
        )
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for outcome in MESSAGE_OUTCOMES:
            self.messages.labels(outcome)
        for result in LOGIN_RESULTS:
            self.logins.labels(result)


class _Authenticated:
    """What a session carries after AUTH: the user's name and settings."""

    def __init__(self, name: str, user: SubmissionUser) -> None:
        self.name, self.user = name, user


class SubmissionSMTP(SMTP):
    """aiosmtpd's protocol, with the login checked off the loop and RFC 3463
    codes on the size refusals aiosmtpd words itself."""

    def __init__(self, handler: SubmissionHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._submission = handler

    async def push(self, status: str | bytes) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        if text.startswith(_AIOSMTPD_REFUSALS_UNAUTHENTICATED):
            self._submission.metrics.refused.labels("unauthenticated").inc()
        elif text.startswith(_AIOSMTPD_AUTH_NEEDS_TLS):
            self._submission.metrics.refused.labels("auth_before_tls").inc()
        if text.startswith(_AIOSMTPD_TOO_BIG):
            self._submission.metrics.refused.labels("too_big").inc()
            text = str(Replies.TOO_BIG).format(limit=self._submission.config.max_message_bytes)
        await super().push(text)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd's PLAIN and LOGIN decode the exchange and call this
        # synchronously; the scrypt check happens in `_verify`, awaited.
        return AuthResult(success=False, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, pending: AuthResult) -> AuthResult:
        creds = pending.auth_data
        if not isinstance(creds, LoginPassword):
            return pending  # the exchange itself failed and was answered
        handler = self._submission
        found = await asyncio.get_running_loop().run_in_executor(
            None, check_login, handler.users, creds.login, creds.password
        )
        if found is None:
            handler.metrics.logins.labels("refused").inc()
            log.info("login refused", extra={"peer": str(self.session and self.session.peer)})
            return AuthResult(success=False, handled=False, message=str(Replies.AUTH_FAILED))
        handler.metrics.logins.labels("ok").inc()
        return AuthResult(success=True, auth_data=_Authenticated(*found))


class SubmissionHandler:
    """aiosmtpd handler hooks: each decision from `submission_policy`."""

    def __init__(
        self,
        config: SubmissionConfig,
        users: dict[str, SubmissionUser],
        outbox: Outbox,
        suppressions: SuppressionList,
        metrics: SubmissionMetrics,
    ) -> None:
        self.config, self.users, self.outbox = config, users, outbox
        self.suppressions, self.metrics = suppressions, metrics
        self.rates = RateLimiter(time.monotonic)

    def _refuse(self, why: str, reply: Reply, **fields: str | int) -> str:
        self.metrics.refused.labels(why).inc()
        return str(reply).format(**fields)

    @staticmethod
    def _user(session: Session) -> _Authenticated | None:
        data = session.auth_data
        return data if isinstance(data, _Authenticated) else None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        auth = self._user(session)
        if auth is None:  # aiosmtpd's auth_required answers first; kept as a second lock
            return str(Replies.AUTH_REQUIRED)  # counted in `push`
        if not valid_address(address):
            return self._refuse("bad_address", Replies.BAD_ADDRESS, address=address)
        if not address_domain_allowed(auth.user, address):
            return self._refuse(
                "sender_domain", Replies.SENDER_FORBIDDEN, address=address, user=auth.name
            )
        if not self.rates.allows(auth.name, auth.user.messages_per_minute):
            return self._refuse("rate", Replies.RATE_LIMITED, user=auth.name)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self._user(session) is None:
            return str(Replies.AUTH_REQUIRED)  # counted in `push`
        if not valid_address(address):
            return self._refuse("bad_address", Replies.BAD_ADDRESS, address=address)
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS_PER_MESSAGE:
            return self._refuse(
                "too_many_recipients", Replies.TOO_MANY_RECIPIENTS, limit=MAX_RECIPIENTS_PER_MESSAGE
            )
        reason = self.suppressions.reason(address)
        if reason is not None:
            if self.config.suppressed_recipients is not SuppressedRecipients.DROP:
                return self._refuse(
                    "suppressed", Replies.SUPPRESSED, address=address, reason=reason
                )
            self.metrics.refused.labels("suppressed_dropped").inc()
            # accepted, and left out at DATA (which looks at the list again)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        auth = self._user(session)
        if auth is None or envelope.mail_from is None:
            return str(Replies.AUTH_REQUIRED)  # counted in `push`
        raw = envelope.original_content or b""
        if len(raw) > self.config.max_message_bytes:
            return self._refuse("too_big", Replies.TOO_BIG, limit=self.config.max_message_bytes)
        domains = header_from_domains(raw)
        if domains is None:
            return self._refuse("from_missing", Replies.FROM_MISSING)
        for domain in domains:
            if not address_domain_allowed(auth.user, f"x@{domain}"):
                return self._refuse(
                    "from_domain", Replies.FROM_FORBIDDEN, domain=domain, user=auth.name
                )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse("not_utf8", Replies.NOT_UTF8)
        # Suppressions that arrived since RCPT count too, as do dropped recipients.
        recipients = [r for r in envelope.rcpt_tos if not self.suppressions.is_suppressed(r)]
        sid = submission_id(auth.name, envelope.mail_from, recipients, message_key(raw))
        if not recipients:  # every recipient suppressed and dropped: accepted, nothing to send
            self.rates.count(auth.name)
            self.metrics.messages.labels("all_dropped").inc()
            return str(Replies.ACCEPTED).format(id=sid)
        records = build_records(sid, envelope.mail_from, recipients, text, time.time())
        topic = self.config.kafka.outbound_topic
        values = [(topic, r.domain.encode(), encode(r)) for r in records]
        largest = max(len(v) for _, _, v in values)
        if largest > self.config.max_record_bytes:  # Kafka would refuse it for ever: not a 451
            return self._refuse("too_big", Replies.TOO_BIG_ENCODED, size=largest)
        started = time.monotonic()
        try:
            fresh = await self.outbox.submit(sid, values)
        except OutboxUnavailable as exc:
            self.metrics.messages.labels("unavailable").inc()
            log.warning("451 for %s: %s", sid, exc)
            return str(Replies.UNAVAILABLE)
        finally:
            self.metrics.commit_seconds.observe(time.monotonic() - started)
        self.rates.count(auth.name)
        if not fresh:
            self.metrics.messages.labels("duplicate").inc()
            log.info("already accepted %s: nothing produced", sid)
            return str(Replies.DUPLICATE).format(id=sid)
        self.metrics.messages.labels("accepted").inc()
        self.metrics.records.inc(len(records))
        log.info("accepted %s: %d record(s)", sid, len(records))
        return str(Replies.ACCEPTED).format(id=sid)


def tls_context(config: SubmissionConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


class SubmissionServer:
    """The two listeners, the outbox and the suppression lists of one process."""

    def __init__(self, config: SubmissionConfig, users: dict[str, SubmissionUser]) -> None:
        self.config = config
        self.metrics = SubmissionMetrics()
        self.suppressions = SuppressionList()
        self.outbox = Outbox(
            config.kafka,
            ledger_topic=config.ledger,
            transactional_id=config.transactional_id,
            deadline_seconds=config.kafka_deadline_seconds,
            max_record_bytes=config.max_record_bytes,
        )
        self.handler = SubmissionHandler(
            config, users, self.outbox, self.suppressions, self.metrics
        )
        self._followers = suppression_followers(
            config.kafka, self.suppressions, self.metrics.refused.labels("bad_suppression").inc
        )
        self._servers: list[asyncio.Server] = []
        self.ports: dict[str, int] = {}

    def _protocol(self, tls: ssl.SSLContext, implicit: bool) -> SubmissionSMTP:
        return SubmissionSMTP(
            self.handler,
            hostname=self.config.hostname,
            ident="mailpipe submission",
            data_size_limit=self.config.max_message_bytes,
            enable_SMTPUTF8=True,
            tls_context=None if implicit else tls,
            require_starttls=False,  # AUTH first needs TLS (538) and MAIL first needs AUTH (530)
            # aiosmtpd knows TLS only from its own STARTTLS; the implicit
            # listener is TLS from the first byte (a clear client fails the handshake).
            auth_require_tls=not implicit,
            auth_required=True,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.outbox.start()
        for follower in self._followers:
            follower.start(loop)
        await self.outbox.ready(READY_TIMEOUT_SECONDS)
        for follower in self._followers:
            await follower.wait_caught_up(READY_TIMEOUT_SECONDS)
        tls = tls_context(self.config)
        listeners = {"starttls": self.config.starttls, "implicit_tls": self.config.implicit_tls}
        for name, listener in listeners.items():
            if listener is None:
                continue
            implicit = name == "implicit_tls"
            server = await loop.create_server(
                lambda implicit=implicit: self._protocol(tls, implicit),
                listener.address,
                listener.port,
                ssl=tls if implicit else None,
            )
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]
        log.info("listening: %s", " ".join(f"{k}={v}" for k, v in self.ports.items()))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self.outbox.stop()
        for follower in self._followers:
            follower.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action")
    serve = sub.add_parser("serve", help="run the endpoint (the default)")
    serve.add_argument("--config", type=Path, required=True, help="submission config (YAML)")
    serve.add_argument("--log-level", default=os.environ.get("MAILPIPE_LOG_LEVEL", "info"))
    serve.add_argument(
        "--transactional-id",
        help="this replica's Kafka transactional id, over the config's (the operator passes"
        " one per pod: two replicas sharing one would fence each other)",
    )
    serve.add_argument(
        "--ensure-topics",
        action="store_true",
        help="create the ledger topic if missing (dev and tests; the operator does it)",
    )
    hashing = sub.add_parser("hash-password", help="a password_hash for the users Secret")
    hashing.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin, not a prompt"
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "hash-password":
        return _hash_password(args)
    if args.action != "serve":
        print("mailpipe submission: say `serve --config FILE` or `hash-password`", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at info
    try:
        config = parse_submission_config(args.config.read_text())
        users = parse_users(Path(config.users_file).read_text())
    except (SubmissionConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    if args.transactional_id:
        config = config.model_copy(update={"transactional_id": args.transactional_id})
    if args.ensure_topics:
        ensure_topics(config.kafka, [config.ledger], 1, 1, compacted=[config.ledger])
    return asyncio.run(_serve(config, users))


async def _serve(config: SubmissionConfig, users: dict[str, SubmissionUser]) -> int:
    server = SubmissionServer(config, users)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    scrape = ScrapeEndpoint(
        server.metrics.registry,
        config.metrics_address,
        config.metrics_port,
        probes={"/readyz": _ready_probe(server)},
    )
    if config.metrics_port:
        await scrape.start()
    try:
        await server.start()
        await stopping.wait()
    finally:
        await server.stop()
        if config.metrics_port:
            await scrape.stop()
    return 0


def _ready_probe(server: SubmissionServer) -> Probe:
    def probe() -> tuple[bool, str]:
        if server.ports:
            return True, "listening"
        return False, "waiting for Kafka transactions and the suppression lists"

    return probe


def _hash_password(args: argparse.Namespace) -> int:
    import getpass

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass()
    if not password:
        print("mailpipe submission hash-password: an empty password is refused", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0
