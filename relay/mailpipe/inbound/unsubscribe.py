"""One-click unsubscribe (RFC 8058): the URL every campaign message carries.

A recipient's mail client (or the mailbox provider, for its own unsubscribe
button) sends `POST <url>` with the form `List-Unsubscribe=One-Click`, as
`multipart/form-data` (RFC 8058 3.1: SHOULD) or
`application/x-www-form-urlencoded` (MAY). The URL's last segment is a token
the relay signed for that one recipient (`contracts.feedback_token`,
purpose UNSUBSCRIBE): it names the namespace, pool, campaign, variant,
recipient and what the unsubscribe suppresses (a list, or the namespace). No
login, no cookie, no redirect (RFC 8058 3.2 forbids them: the POST is made
without a user present).

The answer is 200 only after Kafka acknowledged the suppression (on the
namespace's compacted suppression topic, keyed `suppression_key(address,
list)`) and the `unsubscribed` event (on the pool's events topic, so the
campaign counts it); if Kafka cannot take them the answer is 503 and the
client may retry (mailbox providers do). A `GET` of the same URL shows a page
with a confirm button (a form POSTing the same body) and never unsubscribes:
mail scanners and link previewers follow every link.

A bad token gets a specific status and a one-line reason: malformed or for
another purpose 400, forged, tampered, unknown key or another namespace 403,
expired 410. A body that is not the one-click form: 400.

Bounded, so a flood cannot hurt the pipeline: the endpoint is its own
process with its own producer (the relays never wait for it); at most
`max_concurrent` requests are being handled, and one beyond is answered 503
with Retry-After at once, never queued; bodies over `max_body_bytes` are
refused by aiohttp (413) before they are read; reading the body and waiting
for Kafka each have a deadline. The endpoint is meant to sit behind the
TLS-terminating ingress an https URL needs; connection-level limits (slow
clients holding sockets) are that proxy's job, as for any web service.

Why aiohttp: a maintained asyncio HTTP server that parses both form
encodings, enforces request size limits, and is already installed with kopf;
the stdlib has no asyncio HTTP server, and a form parser of our own for
multipart is exactly the kind of code not to write.

Metrics have bounded labels: method and a fixed outcome word, never a token
or an address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field

from mailpipe.contracts.feedback_token import (
    DEFAULT_VALIDITY_SECONDS,
    Purpose,
    TokenError,
    TokenKeys,
    TokenPayload,
    keys_from_directory,
    verify,
)
from mailpipe.contracts.kafka_security import KafkaConnection
from mailpipe.contracts.topics import SUPPRESSIONS_SUFFIX, Topics, namespace_space
from mailpipe.contracts.wire import FeedbackReason, encode, suppression_key
from mailpipe.endpoints import ScrapeEndpoint

from . import unsubscription

log = logging.getLogger("mailpipe.inbound.unsubscribe")

PATH_PREFIX = "/u/"
FORM_FIELD, FORM_VALUE = "List-Unsubscribe", "One-Click"  # RFC 8058 3.1
HOW = FeedbackReason.ONE_CLICK  # the event's reason and the suppression's detail


class Outcome(NamedTuple):
    """An answer: HTTP status, the metric's outcome word, the one-line reason."""

    status: int
    outcome: str
    message: str


# A token's TokenError.reason -> (status, outcome). 410 Gone for an expired link:
# it did work once; 403 for what was never ours (forged, tampered, a key we do
# not hold) or is another namespace's; 400 for what is not an unsubscribe link.
TOKEN_STATUS: Mapping[str, int] = MappingProxyType(
    {
        "malformed": 400,
        "purpose": 400,
        "forged": 403,
        "unknown_key": 403,
        "foreign": 403,
        "expired": 410,
    }
)
# Every outcome word the requests counter may carry: its labels are these and
# the methods, never a token or an address (a bounded number of series).
OUTCOMES = (
    "unsubscribed",
    "page",
    "bad_body",
    "busy",
    "kafka_unavailable",
    *(f"token_{reason}" for reason in TOKEN_STATUS),
)


def judge_token(
    token: str, keys: TokenKeys, *, now: float, namespace: str | None, validity_seconds: int
) -> TokenPayload | Outcome:
    """Pure: the token's payload, or the answer that refuses it."""
    try:
        return verify(
            token,
            Purpose.UNSUBSCRIBE,
            keys,
            now=now,
            namespace=namespace,
            validity_seconds=validity_seconds,
        )
    except TokenError as exc:
        status = TOKEN_STATUS.get(exc.reason, 400)
        return Outcome(status, f"token_{exc.reason}", f"this unsubscribe link is not valid: {exc}")


def judge_form(form: Mapping[str, Any]) -> Outcome | None:
    """Pure: None for RFC 8058's one-click form, else the 400 that refuses it."""
    values = form.getall(FORM_FIELD, []) if hasattr(form, "getall") else [form.get(FORM_FIELD)]
    if len(form) != 1 or values != [FORM_VALUE]:
        return Outcome(
            400, "bad_body", f"the body must be the form {FORM_FIELD}={FORM_VALUE} (RFC 8058)"
        )
    return None


def suppression_of(payload: TokenPayload, now: float) -> tuple[bytes, bytes]:
    """(key, value) of the suppression a one-click unsubscribe writes."""
    value = unsubscription.suppression(payload, now, HOW)
    return suppression_key(value.address, value.list).encode(), encode(value)


def event_of(payload: TokenPayload, now: float) -> tuple[bytes, bytes]:
    """(key, value) of the `unsubscribed` event the campaign counts."""
    event = unsubscription.event(payload, now, HOW)
    return (event.campaign or payload.recipient).encode(), encode(event)


def _page(title: str, text: str, confirm: bool = False) -> str:
    button = ""
    if confirm:
        # The same body a mail client POSTs, so one handler serves both; no
        # action: the form posts to the URL the browser shows, whatever path
        # prefix an ingress in front of the endpoint rewrote.
        button = (
            '<form method="post" enctype="application/x-www-form-urlencoded">'
            f'<input type="hidden" name="{FORM_FIELD}" value="{FORM_VALUE}">'
            '<button type="submit">Unsubscribe</button></form>'
        )
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{button}</body></html>\n"
    )


def _scope_text(payload: TokenPayload) -> str:
    if payload.mailing_list:
        return f"the list {payload.mailing_list}"
    return "all mail from this sender"


def confirm_page(payload: TokenPayload) -> str:
    what = _scope_text(payload)
    return _page(
        "Unsubscribe",
        f"Unsubscribe {payload.recipient} from {what}? Nothing changes until you confirm.",
        confirm=True,
    )


# --- settings ---------------------------------------------------------------------


class EndpointSettings(BaseModel):
    """What the endpoint serves and where it writes (a YAML file, from a ConfigMap)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(description="the namespace whose tokens are served; others get 403")
    keys_dir: str = Field(
        description="directory of the feedback key Secret: one file per key id, raw key bytes"
    )
    current_key: str | None = Field(
        default=None, description="key id that signs; the endpoint only verifies, so unused"
    )
    kafka: KafkaConnection
    suppressions_topic: str | None = Field(
        default=None, description="default: the namespace's compacted suppression topic"
    )
    events_topics: dict[str, str] = Field(
        default_factory=dict,
        description="pool name -> its events topic, for pools with a topicPrefix;"
        " others use the default naming",
    )
    listen_address: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    metrics_address: str = "0.0.0.0"
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 = no metrics")
    max_concurrent: int = Field(
        default=64,
        ge=1,
        description="requests handled at once; one more is answered 503 at once, never queued",
    )
    # An RFC 8058 body is 26 bytes urlencoded, ~200 as multipart: 4 KiB is ample.
    max_body_bytes: int = Field(default=4096, ge=256, le=1_048_576)
    body_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    kafka_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="wait for the acknowledgement, then answer 503"
    )
    validity_seconds: int = Field(default=DEFAULT_VALIDITY_SECONDS, ge=60)

    @property
    def suppressions(self) -> str:
        return self.suppressions_topic or f"{namespace_space(self.namespace)}.{SUPPRESSIONS_SUFFIX}"

    def events_topic(self, pool: str) -> str:
        return self.events_topics.get(pool) or Topics.for_pool(self.namespace, pool).events


# --- IO ---------------------------------------------------------------------------


class Sender(Protocol):
    async def send(self, topic: str, key: bytes, value: bytes | None) -> None: ...


@dataclass
class Metrics:
    requests: Counter
    in_flight: Gauge
    kafka_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        metrics = cls(
            requests=Counter(
                "mailpipe_unsubscribe_requests",
                "Requests to the one-click unsubscribe endpoint, by method and outcome",
                ["method", "outcome"],
                registry=registry,
            ),
            in_flight=Gauge(
                "mailpipe_unsubscribe_in_flight",
                "Requests being handled (at most max_concurrent)",
                registry=registry,
            ),
            kafka_seconds=Histogram(
                "mailpipe_unsubscribe_kafka_seconds",
                "Time from request to Kafka's acknowledgement of its suppression and event",
                registry=registry,
            ),
        )
        for method in ("GET", "POST"):  # every series from the start, at 0
            for outcome in OUTCOMES:
                metrics.requests.labels(method, outcome)
        return metrics


class UnsubscribeEndpoint:
    """The aiohttp application: `POST`/`GET` `/u/<token>`."""

    def __init__(
        self,
        settings: EndpointSettings,
        keys: TokenKeys,
        sender: Sender,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.keys, self.sender, self.metrics = settings, keys, sender, metrics
        self._clock = clock
        self._busy = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_get(PATH_PREFIX + "{token}", self._get)
        app.router.add_post(PATH_PREFIX + "{token}", self._post)
        return app

    def _answer(self, method: str, outcome: Outcome) -> web.Response:
        self.metrics.requests.labels(method, outcome.outcome).inc()
        headers = {"Cache-Control": "no-store"}
        if outcome.status == 503:
            headers["Retry-After"] = "5"
        title = "Unsubscribed" if outcome.status == 200 else "Not unsubscribed"
        return web.Response(
            status=outcome.status,
            text=_page(title, outcome.message),
            content_type="text/html",
            headers=headers,
        )

    def _token(self, request: web.Request) -> TokenPayload | Outcome:
        return judge_token(
            request.match_info["token"],
            self.keys,
            now=self._clock(),
            namespace=self.settings.namespace,
            validity_seconds=self.settings.validity_seconds,
        )

    async def _get(self, request: web.Request) -> web.Response:
        judged = self._token(request)
        if isinstance(judged, Outcome):
            return self._answer("GET", judged)
        self.metrics.requests.labels("GET", "page").inc()
        return web.Response(
            text=confirm_page(judged),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    async def _post(self, request: web.Request) -> web.Response:
        if self._busy >= self.settings.max_concurrent:
            return self._answer("POST", Outcome(503, "busy", "too many requests; try again"))
        self._busy += 1
        self.metrics.in_flight.inc()
        try:
            return await self._unsubscribe(request)
        finally:
            self._busy -= 1
            self.metrics.in_flight.dec()

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        judged = self._token(request)
        if isinstance(judged, Outcome):
            return self._answer("POST", judged)
        try:
            async with asyncio.timeout(self.settings.body_timeout_seconds):
                form = await request.post()
        except TimeoutError:
            return self._answer("POST", Outcome(408, "bad_body", "the body was not sent in time"))
        except ValueError as exc:  # not a form aiohttp can parse
            return self._answer("POST", Outcome(400, "bad_body", f"unreadable form: {exc}"[:200]))
        bad = judge_form(form)
        if bad is not None:
            return self._answer("POST", bad)
        now = self._clock()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.kafka_timeout_seconds):
                # Suppression first: once it is acknowledged nobody is mailed again;
                # the event only counts it.
                await self.sender.send(self.settings.suppressions, *suppression_of(judged, now))
                await self.sender.send(
                    self.settings.events_topic(judged.pool), *event_of(judged, now)
                )
        except Exception as exc:  # the Kafka client's errors and the timeout alike
            log.warning("unsubscribe not recorded, Kafka: %s: %s", type(exc).__name__, exc)
            return self._answer(
                "POST",
                Outcome(503, "kafka_unavailable", "could not record it just now; try again"),
            )
        self.metrics.kafka_seconds.observe(time.monotonic() - started)
        what = _scope_text(judged)
        return self._answer(
            "POST", Outcome(200, "unsubscribed", f"{judged.recipient} is unsubscribed from {what}.")
        )


# --- process ----------------------------------------------------------------------


def load_settings(path: Path) -> EndpointSettings:
    return EndpointSettings.model_validate(yaml.safe_load(path.read_text()))


async def serve(settings: EndpointSettings, stop: asyncio.Event) -> None:
    """Run the endpoint (and its metrics) until `stop` is set."""
    from .kafka_io import AckedProducer  # the Kafka client only where it is used

    registry = CollectorRegistry()
    producer = AckedProducer(settings.kafka, client_id="mailpipe-unsubscribe")
    endpoint = UnsubscribeEndpoint(
        settings, keys_from_directory(settings.keys_dir, settings.current_key), producer,
        Metrics.create(registry),
    )  # fmt: skip
    runner = web.AppRunner(endpoint.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen_address, settings.port)
    await site.start()
    scrape = None
    if settings.metrics_port:
        # /readyz: a Kafka client exists (until then every POST is a 503)
        probes = {
            "/readyz": lambda: (producer.ready, producer.last_error if not producer.ready else "ok")
        }
        scrape = await ScrapeEndpoint(
            registry, settings.metrics_address, settings.metrics_port, probes=probes
        ).start()
    log.info("one-click unsubscribe on %s:%d", settings.listen_address, settings.port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if scrape is not None:
            await scrape.stop()
        await asyncio.to_thread(producer.close)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    """`mailpipe unsubscribe --config F`: serve until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO)
    settings = load_settings(args.config)

    async def serve_until_stopped() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(serve_until_stopped())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mailpipe one-click unsubscribe endpoint")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
