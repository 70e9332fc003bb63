"""Pure campaign logic: audience, templates, variants, send windows, records.

Everything here is deterministic given its inputs (no clock, no API), so a
resumed fan-out renders exactly the same record for the same index, and every
rule is unit-tested:

- audience: inline, or CSV / JSONL from a ConfigMap; bad rows are reported
  with their line numbers, never silently skipped;
- templates: Jinja2's sandbox with StrictUndefined (a missing merge field is
  an error, not an empty string); HTML autoescaped; CR/LF in any rendered
  header value refused (header injection);
- variants: a stable hash of campaign uid + address picks the bucket, so a
  recipient sees the same variant on every render;
- send windows: the next open moment in the recipient's own time zone.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from mailpipe.contracts.errors import PermanentError
from mailpipe.contracts.wire import Content, DeliveryRecord, ListUnsubscribe
from mailpipe.contracts.wire import Recipient as WireRecipient

from .models import AudienceFormat, CampaignSpec, Recipient, SendWindow, Weekday

WEEKDAYS = list(Weekday)  # Monday first, like datetime.weekday()
WINDOW_SEARCH_DAYS = 8  # a weekly window always opens within a week and a day
VARIANT_BUCKETS = 100  # variant weights are percentages (the CRD makes them sum to 100)
ROW_ERRORS_SHOWN = 5  # enough to fix a file, short enough for a status message


class CampaignError(PermanentError, ValueError):
    """The campaign cannot be sent as written; the message says where."""


# --- audience -------------------------------------------------------------------


def parse_audience(spec: CampaignSpec, configmap_data: dict[str, str] | None) -> list[Recipient]:
    if spec.audience.inline is not None:
        return list(spec.audience.inline)
    ref = spec.audience.config_map_ref
    assert ref is not None  # the CRD's CEL rule guarantees one source
    if configmap_data is None or ref.key not in configmap_data:
        raise CampaignError(f"audience ConfigMap {ref.name} has no key {ref.key!r}")
    text = configmap_data[ref.key]
    if ref.key.endswith(".gz"):
        try:
            text = gzip.decompress(text.encode("latin-1")).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CampaignError(f"audience {ref.key}: not gzip-compressed UTF-8 ({exc})") from exc
    if ref.format is AudienceFormat.JSONL:
        return _parse_jsonl(text)
    return _parse_csv(text)


def _recipient(row: dict[str, object], where: str) -> Recipient:
    address = str(row.pop("address", "") or row.pop("email", "") or "").strip()
    tz = row.pop("timeZone", None) or row.pop("time_zone", None)
    merge_raw = row.pop("merge", None)
    merge = {k: str(v) for k, v in row.items() if v is not None and v != ""}
    if isinstance(merge_raw, dict):
        merge.update({str(k): str(v) for k, v in merge_raw.items()})
    try:
        return Recipient(address=address, time_zone=str(tz) if tz else None, merge=merge)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise CampaignError(f"{where}: invalid {fields}: {address!r}") from None


def _parse_csv(text: str) -> list[Recipient]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not ({"address", "email"} & set(reader.fieldnames)):
        raise CampaignError("audience CSV needs a header row with an 'address' column")
    out: list[Recipient] = []
    errors: list[str] = []
    for row in reader:
        try:
            out.append(_recipient(dict(row), f"line {reader.line_num}"))
        except CampaignError as exc:
            errors.append(str(exc))
    _raise_if(errors)
    return out


def _parse_jsonl(text: str) -> list[Recipient]:
    out: list[Recipient] = []
    errors: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise CampaignError(f"line {number}: not a JSON object")
            out.append(_recipient(row, f"line {number}"))
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not JSON ({exc.msg})")
        except CampaignError as exc:
            errors.append(str(exc))
    _raise_if(errors)
    return out


def _raise_if(errors: list[str]) -> None:
    if errors:
        hidden = len(errors) - ROW_ERRORS_SHOWN
        more = f" (and {hidden} more)" if hidden > 0 else ""
        raise CampaignError("bad audience rows: " + "; ".join(errors[:ROW_ERRORS_SHOWN]) + more)


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


class Renderer:
    """Compiled templates of one campaign (and its variants)."""

    def __init__(self, spec: CampaignSpec, campaign: str) -> None:
        self.spec = spec
        self.campaign = campaign
        self._plain = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self._html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
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
        except TemplateError as exc:
            raise CampaignError(f"template syntax: {exc}") from exc

    def render(
        self, recipient: Recipient, variant: str | None
    ) -> tuple[Content, ListUnsubscribe | None]:
        context = {**recipient.merge, "address": recipient.address, "campaign": self.campaign}
        subject_t, text_t, html_t = self._compiled[variant if variant in self._compiled else None]
        try:
            unsub_url = self._unsub.render(context) if self._unsub else None
            context["unsubscribe_url"] = unsub_url or ""
            subject = subject_t.render(context)
            text = text_t.render(context) if text_t else None
            html = html_t.render(context) if html_t else None
        except TemplateError as exc:
            raise CampaignError(f"recipient {recipient.address}: {exc}") from exc
        for name, value in (("subject", subject), ("unsubscribe url", unsub_url or "")):
            if "\r" in value or "\n" in value:
                raise CampaignError(
                    f"recipient {recipient.address}: {name} contains CR/LF (header injection)"
                )
        unsub = None
        if self.spec.unsubscribe:
            unsub = ListUnsubscribe(
                url=unsub_url,
                mailto=self.spec.unsubscribe.mailto,
                one_click=self.spec.unsubscribe.one_click,
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
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CampaignError(f"unknown time zone {name!r}") from exc


def next_open(earliest: float, windows: list[SendWindow], tz: ZoneInfo) -> float:
    """The first moment at or after `earliest` inside one of `windows`, local to `tz`."""
    if not windows:
        return earliest
    local = dt.datetime.fromtimestamp(earliest, tz)
    for offset in range(WINDOW_SEARCH_DAYS):
        day = local.date() + dt.timedelta(days=offset)
        weekday = WEEKDAYS[day.weekday()]
        candidates = []
        for w in windows:
            if weekday not in w.days:
                continue
            start = dt.datetime.combine(day, dt.time.fromisoformat(w.start), tz)
            end = dt.datetime.combine(day, dt.time.fromisoformat(w.end), tz)
            moment = max(start, local) if offset == 0 else start
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
