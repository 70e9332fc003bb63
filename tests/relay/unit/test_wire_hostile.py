"""The record decoder refuses, with a WireError and a reason, whatever bytes it gets
(issue 10, findings 1, 4 and 7): never another exception, never a coerced value."""

from __future__ import annotations

import json
import time

import pytest

from mailpipe.contracts.wire import (
    WireError,
    decode_control,
    decode_event,
    decode_record,
    decode_suppression,
)

pytestmark = pytest.mark.security

GOOD = {
    "v": 1,
    "id": "m1",
    "sender": "news@sender.test",
    "recipients": [{"address": "a@d.test"}],
    "content": {"subject": "hello", "text": "body"},
    "created_at": 1_700_000_000.0,
}


def _with(**changes: object) -> bytes:
    value = {**GOOD, **changes}
    return json.dumps(value).encode()


def _without(key: str) -> bytes:
    return json.dumps({k: v for k, v in GOOD.items() if k != key}).encode()


HOSTILE = {
    "deeply-nested": b"[" * 1000 + b"]" * 1000,
    "deeply-nested-object": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "huge-integer": b'{"v":1,"attempt":' + b"9" * 4301 + b"}",
    "non-utf8": b'{"v":1,"id":"\xff\xfe"}',
    "nan-not-before": _with(not_before=float("nan")),
    "inf-not-before": _with(not_before=float("inf")),
    "absurd-not-before": _with(not_before=1e308),
    "nan-created-at": _with(created_at=float("nan")),
    "no-version": _without("v"),
    "attempt-as-string": _with(attempt="3"),
    "attempt-as-bool": _with(attempt=True),
    "created-at-as-bool": _with(created_at=True),
    "created-at-as-string": _with(created_at="1700000000"),
}


def test_the_good_record_decodes() -> None:
    assert decode_record(json.dumps(GOOD).encode()).id == "m1"


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_values_are_wire_errors(value: bytes) -> None:
    with pytest.raises(WireError) as err:
        decode_record(value)
    assert str(err.value)


@pytest.mark.parametrize("decode", [decode_event, decode_suppression, decode_control])
@pytest.mark.parametrize("value", [HOSTILE["deeply-nested"], HOSTILE["huge-integer"]])
def test_followed_topics_decode_hostile_values_as_wire_errors(decode: object, value: bytes) -> None:
    with pytest.raises(WireError):
        decode(value)  # type: ignore[operator]


def test_a_time_a_year_ahead_is_fine() -> None:
    assert decode_record(_with(not_before=time.time() + 365 * 86400)).not_before is not None
