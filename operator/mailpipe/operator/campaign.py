"""Pure campaign logic: templates, variants, send windows, records.

Everything here is deterministic given its inputs (no clock, no API), so a
resumed fan-out renders exactly the same record for the same index, and every
rule is unit-tested (the audience is read and checked in `audience`):

- templates: Jinja2's sandbox with StrictUndefined (a missing merge field is
  an error, not an empty string); HTML autoescaped; CR/LF in any rendered
  header value refused (header injection); bounded: output size, operand
  sizes of `*` and `**`, and render CPU time (cooperatively at every call, and
  by SIGPROF where the renderer runs in the main thread of its own process,
  see `render_check`); every exception a template can raise becomes a
  `CampaignError` with a reason, never an endless retry. Time is CPU time,
  never wall time: a render limit must not depend on how busy the node is
  (a template that passed on a quiet node failed in 7 s on a busy one);
- variants: a stable hash of campaign uid + address picks the bucket, so a
  recipient sees the same variant on every render;
- send windows: the next open moment in the recipient's own time zone; a
  window whose end is before its start runs overnight (22:00-06:00), and
  belongs to the day it opens.

Over 300 lines: the renderer's limits (`_BoundedSandbox`, `_alarm`,
`_bounded`) sit beside the renderer they bound, so one reading shows every
way a template can fail and the reason each failure is reported with.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from mailpipe.contracts.errors import PermanentError
from mailpipe.contracts.wire import Content, DeliveryRecord, ListUnsubscribe
from mailpipe.contracts.wire import Recipient as WireRecipient

from .models import CampaignSpec, Recipient, SendWindow, UnsubscribeScope, Weekday

WEEKDAYS = tuple(Weekday)  # Monday first, like datetime.weekday()
# A weekly window always opens within a week and a day; one more day finds
# the overnight window that opened yesterday and is still open.
WINDOW_SEARCH_DAYS = 9
VARIANT_BUCKETS = 100  # variant weights are percentages (the CRD makes them sum to 100)
# The encoded record must fit Kafka's default message.max.bytes (1,048,588) and
# the producer's max.request.size (1 MiB) with room for batch and record headers:
# beyond that the producer fails with MessageSizeTooLarge on every retry.
MAX_RECORD_BYTES = 900_000
MAX_RENDERED_CHARS = MAX_RECORD_BYTES  # one rendered part may not exceed the record alone
# A mail renders in well under a millisecond of CPU; a CPU second means a
# runaway loop. CPU time: the same template gets the same verdict on a busy node.
RENDER_SECONDS = 1.0
# 2**4096 is larger than anything a mail can mean; 10**10**10 would take hours.
MAX_POWER_BITS = 4096


class FailReason(enum.StrEnum):
    """Why a campaign cannot be sent: the reason of its Failed condition and Warning Event."""

    INVALID_SPEC = "InvalidSpec"  # a campaign-wide setting (zone, startAt, windows, templates)
    INVALID_AUDIENCE = "InvalidAudience"  # rows with problems, under onInvalid: Fail
    TEMPLATE_ERROR = "TemplateError"  # the template raised (1/0, huge range, recursion)
    RENDER_LIMIT = "RenderLimitExceeded"  # output, operand, time or memory limit
    # the audience is not the one the fan-out started with: resuming by index
    # would skip some people and mail others twice
    AUDIENCE_CHANGED = "AudienceChanged"

    @property
    def fixed_in_audience(self) -> bool:
        """The cause can be fixed by editing the audience ConfigMap alone (no spec
        edit, so no new generation): the operator looks at the ConfigMap again."""
        return self in (FailReason.INVALID_AUDIENCE, FailReason.AUDIENCE_CHANGED)


class CampaignError(PermanentError, ValueError):
    """The campaign cannot be sent as written; the message says where, `reason` why."""

    def __init__(self, message: str, reason: FailReason = FailReason.INVALID_SPEC) -> None:
        super().__init__(message)
        self.reason = reason


class RecipientError(CampaignError):
    """A problem of one recipient's data (missing merge field, CR/LF), not of the template."""

    def __init__(self, message: str) -> None:
        super().__init__(message, FailReason.INVALID_AUDIENCE)


class _RenderLimit(Exception):
    """Raised inside a render when a limit is hit; becomes a CampaignError."""


# --- variants ---------------------------------------------------------------------


def choose_variant(seed: str, address: str, weights: list[tuple[str, int]]) -> str | None:
    if not weights:
        return None
    digest = hashlib.sha256(f"{seed}:{address.lower()}".encode()).digest()
    bucket = int.from_bytes(digest[:8]) % VARIANT_BUCKETS  # 64 bits: no visible modulo bias
    total = 0
    for name, weight in weights:
        total += weight
        if bucket < total:
            return name
    return weights[-1][0]


# --- templates --------------------------------------------------------------------


@dataclass(frozen=True)
class _Templates:
    subject: str
    text: str | None
    html: str | None


class _BoundedSandbox(SandboxedEnvironment):
    """Jinja's sandbox plus limits: operand sizes of `*` and `**`, and a render deadline.

    The deadline (in the rendering thread's CPU time, `time.thread_time`) is
    checked at every call a template makes (functions, macros, filters'
    callables): that stops runaway recursion and call-heavy loops in any
    thread. A loop that calls nothing is stopped only by SIGPROF, which is
    why the whole audience is first rendered in a process of its own.
    """

    intercepted_binops = frozenset({"*", "**"})  # also stops constant folding at compile time

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=autoescape)
        self.deadline = float("inf")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(n, int)
                if sized and len(seq) * n > MAX_RENDERED_CHARS:
                    raise _RenderLimit(f"'*' would build {len(seq) * n} items")
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and ints and max(abs(left).bit_length(), 1) * right > MAX_POWER_BITS:
            raise _RenderLimit(f"'**' result over {MAX_POWER_BITS} bits")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if time.thread_time() > __self.deadline:
            raise _RenderLimit("render needed too much CPU time")
        return super().call(__context, __obj, *args, **kwargs)


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """SIGPROF after `seconds` of the process's CPU time: interrupts even a loop
    that calls nothing, and never fires for time spent waiting for a CPU.
    Main thread of a single-threaded process only (`render_check`)."""

    def fire(_signum: int, _frame: object) -> None:
        raise _RenderLimit(f"render needed over {seconds:g} s of CPU")

    previous = signal.signal(signal.SIGPROF, fire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _bounded(chunks: Iterable[str], what: str) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_RENDERED_CHARS:
            raise _RenderLimit(f"{what} renders over {MAX_RENDERED_CHARS} characters")
        out.append(chunk)
    return "".join(out)


class Renderer:
    """Compiled templates of one campaign (and its variants), rendered within limits.

    `alarm=True` adds a SIGPROF per render: only for the main thread of the
    render-check process (`render_check`), where a signal can interrupt.
    `seconds` is the CPU time one message may take to render. `endpoint`: the
    pool has a one-click endpoint (SendingPool spec.unsubscribe), the default
    unsubscribe URL; None while the pool is not known (the audience check).
    """

    def __init__(
        self,
        spec: CampaignSpec,
        campaign: str,
        *,
        alarm: bool = False,
        seconds: float = RENDER_SECONDS,
        endpoint: bool | None = None,
    ) -> None:
        self.spec = spec
        self.campaign = campaign
        self.endpoint = endpoint is not False
        unsubscribe = spec.unsubscribe
        if (
            endpoint is False
            and unsubscribe is not None
            and unsubscribe.one_click
            and not unsubscribe.url
        ):
            raise CampaignError(
                "one-click unsubscribe needs spec.unsubscribe.url, or a pool with a one-click"
                " endpoint (SendingPool spec.unsubscribe)"
            )
        self.list = (
            unsubscribe.list
            if unsubscribe is not None and unsubscribe.scope is UnsubscribeScope.LIST
            else None
        )
        self._alarm = alarm
        self._seconds = seconds
        self._plain = _BoundedSandbox(autoescape=False)
        self._html = _BoundedSandbox(autoescape=True)
        base = _Templates(spec.subject, spec.text, spec.html)
        self._sets: dict[str | None, _Templates] = {None: base}
        for v in spec.variants:
            self._sets[v.name] = _Templates(
                v.subject or base.subject, v.text or base.text, v.html or base.html
            )
        try:
            self._compiled = {
                name: (
                    self._plain.from_string(t.subject),
                    self._plain.from_string(t.text) if t.text else None,
                    self._html.from_string(t.html) if t.html else None,
                )
                for name, t in self._sets.items()
            }
            self._unsub = (
                self._plain.from_string(spec.unsubscribe.url)
                if spec.unsubscribe and spec.unsubscribe.url
                else None
            )
        except _RenderLimit as exc:
            raise CampaignError(f"template: {exc}", FailReason.RENDER_LIMIT) from None
        except TemplateError as exc:
            raise CampaignError(f"template syntax: {exc}", FailReason.TEMPLATE_ERROR) from exc

    def render(
        self, recipient: Recipient, variant: str | None
    ) -> tuple[Content, ListUnsubscribe | None]:
        who = f"recipient {recipient.address}"
        deadline = time.thread_time() + self._seconds
        self._plain.deadline = self._html.deadline = deadline
        timer = _alarm(self._seconds) if self._alarm else contextlib.nullcontext()
        try:
            with timer:
                return self._render(recipient, variant)
        except CampaignError:
            raise
        except UndefinedError as exc:
            raise RecipientError(f"{who}: {exc}") from None
        except (_RenderLimit, MemoryError) as exc:
            raise CampaignError(
                f"{who}: {exc or 'out of memory'}", FailReason.RENDER_LIMIT
            ) from None
        except Exception as exc:
            # A template can raise anything (ZeroDivisionError, OverflowError from
            # the sandbox's range, RecursionError): each is a verdict on the
            # template, never a reason to retry.
            detail = f"{type(exc).__name__}: {exc}"[:200]
            raise CampaignError(f"{who}: {detail}", FailReason.TEMPLATE_ERROR) from None

    def _render(
        self, recipient: Recipient, variant: str | None
    ) -> tuple[Content, ListUnsubscribe | None]:
        context = {**recipient.merge, "address": recipient.address, "campaign": self.campaign}
        subject_t, text_t, html_t = self._compiled[variant if variant in self._compiled else None]

        def run(t: Template, what: str) -> str:
            return _bounded(t.generate(context), what)

        unsub_url = run(self._unsub, "unsubscribe url") if self._unsub else None
        context["unsubscribe_url"] = unsub_url or ""
        subject = run(subject_t, "subject")
        text = run(text_t, "text") if text_t else None
        html = run(html_t, "html") if html_t else None
        for name, value in (("subject", subject), ("unsubscribe url", unsub_url or "")):
            if "\r" in value or "\n" in value:
                raise RecipientError(
                    f"recipient {recipient.address}: {name} contains CR/LF (header injection)"
                )
        unsub = None
        own = self.spec.unsubscribe
        if own is not None and (own.url or not self.endpoint):
            unsub = ListUnsubscribe(
                url=unsub_url, mailto=own.mailto, one_click=own.one_click, list=self.list
            )
        elif self.endpoint:
            # The pool's endpoint: the relay signs the recipient's token into its URL.
            unsub = ListUnsubscribe(
                endpoint=True,
                mailto=own.mailto if own else None,
                one_click=own.one_click if own else True,
                list=self.list,
            )
        sender = self.spec.from_
        content = Content(
            subject=subject,
            text=text,
            html=html,
            from_name=sender.name,
            reply_to=self.spec.reply_to,
        )
        return content, unsub


# --- schedule ---------------------------------------------------------------------


def parse_start(start_at: str | None) -> float | None:
    if start_at is None:
        return None
    try:
        return dt.datetime.fromisoformat(start_at.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise CampaignError(f"startAt {start_at!r} is not an RFC 3339 time") from exc


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CampaignError(f"unknown time zone {name!r}") from None


def next_open(earliest: float, windows: list[SendWindow], tz: ZoneInfo) -> float:
    """The first moment at or after `earliest` inside one of `windows`, local to `tz`.

    A window with end <= start closes the next day; it is listed under the day
    it opens, so the search starts one day back to find one still open.
    """
    if not windows:
        return earliest
    local = dt.datetime.fromtimestamp(earliest, tz)
    for offset in range(-1, WINDOW_SEARCH_DAYS - 1):
        day = local.date() + dt.timedelta(days=offset)
        weekday = WEEKDAYS[day.weekday()]
        candidates = []
        for w in windows:
            if weekday not in w.days:
                continue
            start = dt.datetime.combine(day, dt.time.fromisoformat(w.start), tz)
            closes = day + dt.timedelta(days=1) if w.end <= w.start else day
            end = dt.datetime.combine(closes, dt.time.fromisoformat(w.end), tz)
            moment = max(start, local)
            if moment < end:
                candidates.append(moment)
        if candidates:
            return min(candidates).timestamp()
    raise CampaignError("send windows never open")


# --- records ------------------------------------------------------------------------


def record_id(uid: str, index: int) -> str:
    """Deterministic: the same index of the same campaign is always the same message."""
    return f"{uid}-{index}"


def build_record(
    *,
    campaign: str,
    uid: str,
    index: int,
    recipient: Recipient,
    spec: CampaignSpec,
    renderer: Renderer,
    now: float,
) -> DeliveryRecord:
    weights = [(v.name, v.weight) for v in spec.variants]
    variant = choose_variant(uid, recipient.address, weights)
    content, unsub = renderer.render(recipient, variant)
    earliest = max(now, parse_start(spec.start_at) or now)
    tz = zone(recipient.time_zone or spec.time_zone)
    not_before = next_open(earliest, spec.send_windows, tz)
    return DeliveryRecord(
        id=record_id(uid, index),
        campaign=campaign,
        variant=variant,
        sender=spec.from_.address,
        recipients=[WireRecipient(address=recipient.address)],
        content=content,
        list_unsubscribe=unsub,
        created_at=now,
        not_before=not_before if not_before > now else None,
    )
