"""The audience, read and checked whole before the first record is produced.

Why a module of its own: a campaign that fails half-way has already mailed
people (a blank merge value in row 2,201 once mailed 2,000 before failing),
so everything that can fail per recipient happens here, up front:

1. parse: inline, or CSV / JSONL from a ConfigMap; every problem keeps its line;
2. normalise: the domain is lower-cased, the local part kept as written
   (RFC 5321 lets it be case-sensitive, but receivers treat it as not);
3. de-duplicate case-insensitively (`address.lower()`, the key the tally and
   the suppression list use), first occurrence wins;
4. validate and render: the recipient's time zone, and the exact record the
   fan-out will produce (the variant the recipient gets, every template of
   it, the encoded size), within the renderer's limits.

A row with a problem fails the campaign (`onInvalid: Fail`, the default) or is
left out and counted by reason (`Skip`). A template error or limit always
fails the campaign: it is not a property of one row. The prepared audience is
deterministic for the same spec and data, so a resumed fan-out gets the same
indices. Pure: the caller passes `now`.
"""

from __future__ import annotations

import csv
import enum
import gzip
import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mailpipe.contracts.wire import encode

from .campaign import (
    MAX_RECORD_BYTES,
    CampaignError,
    FailReason,
    RecipientError,
    Renderer,
    build_record,
    next_open,
    parse_start,
    zone,
)
from .models import AudienceFormat, CampaignSpec, OnInvalid, Recipient

ROW_ERRORS_SHOWN = 5  # enough to fix a file, short enough for a status message


# 128 bits of SHA-256: no accidental collision between two audiences of a campaign
AUDIENCE_DIGEST_CHARS = 32


class SkipReason(enum.StrEnum):
    """Why a row was left out: the keys of `status.audience.skipped`."""

    INVALID_ROW = "invalidRow"  # not parseable, or an invalid address or field
    UNKNOWN_TIME_ZONE = "unknownTimeZone"  # well-formed but not in the IANA database
    RENDER_ERROR = "renderError"  # a merge field its template needs is missing or has CR/LF


@dataclass(frozen=True)
class Row:
    """One audience entry as read: a recipient, or the problem that keeps it out."""

    where: str  # "line 12" (ConfigMap) or "inline[3]"
    recipient: Recipient | None
    problem: str | None = None


@dataclass
class PreparedAudience:
    """The audience the fan-out produces, index by index, and what was left out."""

    recipients: list[Recipient]
    rows: int = 0
    deduplicated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first few, "line N: ..."

    def summary(self) -> dict[str, Any]:
        """`status.audience`: what `kubectl get -o yaml` shows of the check."""
        return {
            "rows": self.rows,
            "recipients": len(self.recipients),
            "deduplicated": self.deduplicated,
            "skipped": sum(self.skipped.values()),
            "skippedByReason": dict(self.skipped),
            "problems": self.problems[:ROW_ERRORS_SHOWN],
        }

    def digest(self) -> str:
        """What the fan-out's indices refer to: the recipients in order, with their data.

        A resumed fan-out skips indices by position, so it may only resume over
        the same list (`FanoutCheckpoint.audience_digest`)."""
        recipients = [r.model_dump(by_alias=True, exclude_none=True) for r in self.recipients]
        text = json.dumps(recipients, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:AUDIENCE_DIGEST_CHARS]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "problems": self.problems,
            "recipients": [r.model_dump(by_alias=True, exclude_none=True) for r in self.recipients],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparedAudience:
        return cls(
            recipients=[Recipient.model_validate(r) for r in data["recipients"]],
            rows=data["rows"],
            deduplicated=data["deduplicated"],
            skipped=dict(data["skippedByReason"]),
            problems=list(data["problems"]),
        )


# --- parse ----------------------------------------------------------------------


def parse_rows(spec: CampaignSpec, configmap_data: dict[str, str] | None) -> list[Row]:
    """Every entry of the audience, good or not; raises only if the source itself is unusable."""
    if spec.audience.inline is not None:
        return [Row(f"inline[{i}]", r) for i, r in enumerate(spec.audience.inline)]
    ref = spec.audience.config_map_ref
    assert ref is not None  # the CRD's CEL rule guarantees one source
    if configmap_data is None:
        raise CampaignError(f"audience ConfigMap {ref.name} not found", FailReason.INVALID_AUDIENCE)
    if ref.key not in configmap_data:
        raise CampaignError(
            f"audience ConfigMap {ref.name} has no key {ref.key!r}", FailReason.INVALID_AUDIENCE
        )
    text = configmap_data[ref.key]
    if ref.key.endswith(".gz"):
        try:
            text = gzip.decompress(text.encode("latin-1")).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CampaignError(
                f"audience {ref.key}: not gzip-compressed UTF-8 ({exc})",
                FailReason.INVALID_AUDIENCE,
            ) from exc
    if ref.format is AudienceFormat.JSONL:
        return _parse_jsonl(text)
    return _parse_csv(text)


def parse_audience(spec: CampaignSpec, configmap_data: dict[str, str] | None) -> list[Recipient]:
    """The recipients as written (no normalisation); raises on the first bad rows."""
    rows = parse_rows(spec, configmap_data)
    _raise_if([f"{r.where}: {r.problem}" for r in rows if r.recipient is None])
    return [r.recipient for r in rows if r.recipient is not None]


def _row(raw: dict[str, object], where: str) -> Row:
    address = str(raw.pop("address", "") or raw.pop("email", "") or "").strip()
    tz = raw.pop("timeZone", None) or raw.pop("time_zone", None)
    merge_raw = raw.pop("merge", None)
    merge = {k: str(v) for k, v in raw.items() if v is not None and v != ""}
    if isinstance(merge_raw, dict):
        merge.update({str(k): str(v) for k, v in merge_raw.items()})
    try:
        return Row(
            where, Recipient(address=address, time_zone=str(tz) if tz else None, merge=merge)
        )
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        return Row(where, None, f"invalid {fields}: {address!r}")


def _parse_csv(text: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not ({"address", "email"} & set(reader.fieldnames)):
        raise CampaignError(
            "audience CSV needs a header row with an 'address' column", FailReason.INVALID_AUDIENCE
        )
    return [_row(dict(row), f"line {reader.line_num}") for row in reader]


def _parse_jsonl(text: str) -> list[Row]:
    out: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append(Row(where, None, f"not JSON ({exc.msg})"))
            continue
        if not isinstance(raw, dict):
            out.append(Row(where, None, "not a JSON object"))
            continue
        out.append(_row(raw, where))
    return out


def _raise_if(errors: list[str]) -> None:
    if errors:
        hidden = len(errors) - ROW_ERRORS_SHOWN
        more = f" (and {hidden} more)" if hidden > 0 else ""
        raise CampaignError(
            "bad audience rows: " + "; ".join(errors[:ROW_ERRORS_SHOWN]) + more,
            FailReason.INVALID_AUDIENCE,
        )


# --- normalise, de-duplicate, validate, render ------------------------------------


def normalise(address: str) -> str:
    """Domain lower-cased, local part kept: `Ann@Example.COM` -> `Ann@example.com`."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def prepare_audience(
    spec: CampaignSpec,
    configmap_data: dict[str, str] | None,
    *,
    campaign: str,
    uid: str,
    now: float,
    renderer: Renderer | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedAudience:
    """The whole audience checked as the fan-out will produce it; raises CampaignError.

    `progress(done, rows)` after each row: what the campaign's status shows
    while a large audience is checked, and where a budget over the whole
    check is enforced (it may raise CampaignError)."""
    renderer = renderer or Renderer(spec, campaign)
    zone(spec.time_zone)  # campaign-wide settings fail the campaign, whatever onInvalid says
    parse_start(spec.start_at)
    if spec.send_windows:
        next_open(now, spec.send_windows, zone("UTC"))
    rows = parse_rows(spec, configmap_data)
    out = PreparedAudience(recipients=[], rows=len(rows))
    skipped: Counter[str] = Counter()
    problems: list[str] = []
    seen: set[str] = set()

    def skip(row: Row, reason: SkipReason, problem: str) -> None:
        skipped[reason.value] += 1
        problems.append(f"{row.where}: {problem}")

    for index, row in enumerate(rows):
        if progress is not None:
            progress(index, len(rows))
        if row.recipient is None:
            skip(row, SkipReason.INVALID_ROW, row.problem or "invalid")
            continue
        address = normalise(row.recipient.address)
        if address.lower() in seen:
            out.deduplicated += 1
            continue
        recipient = row.recipient.model_copy(update={"address": address})
        if recipient.time_zone is not None:
            try:
                zone(recipient.time_zone)
            except CampaignError as exc:
                skip(row, SkipReason.UNKNOWN_TIME_ZONE, str(exc))
                continue
        try:
            record = build_record(
                campaign=campaign,
                uid=uid,
                index=len(out.recipients),
                recipient=recipient,
                spec=spec,
                renderer=renderer,
                now=now,
            )
        except RecipientError as exc:
            skip(row, SkipReason.RENDER_ERROR, str(exc))
            continue
        except CampaignError as exc:
            raise CampaignError(f"{row.where}: {exc}", exc.reason) from None
        if len(encode(record)) > MAX_RECORD_BYTES:
            raise CampaignError(
                f"{row.where}: the message encodes to over {MAX_RECORD_BYTES} bytes "
                "(Kafka's default message size is 1 MiB)",
                FailReason.RENDER_LIMIT,
            )
        seen.add(address.lower())
        out.recipients.append(recipient)
    if progress is not None:
        progress(len(rows), len(rows))
    out.skipped = dict(sorted(skipped.items()))
    out.problems = problems
    if problems and spec.audience.on_invalid is OnInvalid.FAIL:
        _raise_if(problems)
    if not out.recipients and problems:
        raise CampaignError(
            f"no recipient left after skipping {len(problems)} rows: {problems[0]}",
            FailReason.INVALID_AUDIENCE,
        )
    return out
