"""Issue 10 findings 7 and 11: header hygiene of the message composer.

Every header the composer writes is checked here, not only where the wire
model happens to validate: C0 controls (CR, LF, NUL, VT, FF, ...) never reach
a header raw; `content.headers` cannot replace the headers the composer owns
or add a Bcc, nor use a name outside RFC 5322's printable ASCII; a merge
field cannot add a List-Unsubscribe target; a record with several recipients
does not show them to each other. Records built with `model_construct` skip
the wire's own checks, so the composer's are tested alone.

The property test generates hostile content and checks what the standard
library's parser sees: the composer's headers once each, nothing injected.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mailpipe.contracts.wire import Content, DeliveryRecord, Recipient, decode_record
from mailpipe.relay.message import MessageError, build_message

pytestmark = pytest.mark.security

NOW = 1_700_000_000.0
OWN = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)  # fmt: skip  (a text-only message: one part)


def record(content: dict[str, Any], *recipients: str, **extra: Any) -> DeliveryRecord:
    rec: dict[str, Any] = {
        "v": 1,
        "id": "camp-42",
        "sender": "news@sender.test",
        "recipients": [{"address": r} for r in recipients or ("ann@dest.test",)],
        "content": content,
        "created_at": NOW,
    }
    rec.update(extra)
    return decode_record(json.dumps(rec).encode())


def unchecked(
    *, subject: str = "s", from_name: str | None = None, headers: Any = (), sender: str = ""
) -> DeliveryRecord:
    """A record the wire model never validated (what a wire bug would let through)."""
    content = Content.model_construct(
        subject=subject,
        text="body",
        html=None,
        headers=list(headers),
        from_name=from_name,
        reply_to=None,
    )
    return DeliveryRecord.model_construct(
        v=1,
        id="camp-42",
        campaign=None,
        variant=None,
        sender=sender or "news@sender.test",
        recipients=[Recipient.model_construct(address="ann@dest.test", merge={})],
        content=content,
        raw=None,
        list_unsubscribe=None,
        created_at=NOW,
        not_before=None,
        attempt=0,
    )


def head(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def header_names(data: bytes) -> list[str]:
    return [
        line.split(b":", 1)[0].decode()
        for line in head(data).split(b"\r\n")
        if line and not line[:1].isspace()
    ]


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


CONTROLS = [chr(c) for c in range(0x20) if c != 0x09] + ["\x7f"]


@pytest.mark.parametrize("char", CONTROLS, ids=[f"0x{ord(c):02x}" for c in CONTROLS])
@pytest.mark.parametrize("field", ["subject", "from_name", "extra"])
def test_control_characters_never_reach_a_header(field: str, char: str) -> None:
    value = f"spring{char}sale"
    rec = unchecked(
        subject=value if field == "subject" else "s",
        from_name=value if field == "from_name" else None,
        headers=[("X-Note", value)] if field == "extra" else [],
    )
    with pytest.raises(MessageError, match="control character"):
        build_message(rec, NOW)


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1b", "\x7f"])
def test_controls_the_wire_lets_through_are_refused(char: str) -> None:
    with pytest.raises(MessageError, match="Subject"):
        build_message(record({"subject": f"a{char}b", "text": "t"}), NOW)


@pytest.mark.parametrize(
    "name",
    ["From", "to", "SUBJECT", "Date", "Message-ID", "Bcc", "Cc", "Sender", "Reply-To",
     "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe",
     "DKIM-Signature", "Return-Path"],
)  # fmt: skip
def test_extra_headers_cannot_replace_or_add_reserved_headers(name: str) -> None:
    rec = record({"subject": "s", "text": "t", "headers": [[name, "evil@attacker.test"]]})
    with pytest.raises(MessageError, match="reserved"):
        build_message(rec, NOW)


@pytest.mark.parametrize("name", ["X\tTab", "X Space", "X:Colon", "X-Ümlaut", "", "X\x7f"])
def test_extra_header_names_are_printable_ascii_without_colon(name: str) -> None:
    with pytest.raises(MessageError, match="header name"):
        build_message(unchecked(headers=[(name, "v")]), NOW)


def test_several_recipients_do_not_see_each_other() -> None:
    rec = record({"subject": "s", "text": "t"}, "ann@dest.test", "bob@dest.test", "cy@dest.test")
    data = build_message(rec, NOW)
    assert parse(data)["To"] == "undisclosed-recipients:;"
    for address in (b"ann@", b"bob@", b"cy@"):
        assert address not in data
    single = parse(build_message(record({"subject": "s", "text": "t"}), NOW))
    assert single["To"] == "ann@dest.test"


def test_merge_field_cannot_add_a_list_unsubscribe_target() -> None:
    url = "https://u.sender.test/u?id=1>, <https://evil.test/x"
    rec = record(
        {"subject": "s", "text": "t"},
        list_unsubscribe={"url": url, "mailto": "unsub@sender.test"},
    )
    value = parse(build_message(rec, NOW))["List-Unsubscribe"]
    targets = re.findall(r"<([^<>]*)>", value)
    assert len(targets) == 2, value
    assert targets[0].startswith("https://u.sender.test/u?id=1")
    assert "evil.test" in targets[0]  # still there, but only inside the first target
    assert targets[1] == "mailto:unsub@sender.test"


def test_odd_record_id_gives_a_well_formed_message_id() -> None:
    rec = record({"subject": "s", "text": "t"}, id='a b>c<d"e')
    mid = parse(build_message(rec, NOW))["Message-ID"]
    assert re.fullmatch(r"<[!#$%&'*+/=?^_`{|}~.A-Za-z0-9-]+@sender\.test>", mid), mid


def test_idn_addresses_are_written_as_a_labels() -> None:
    rec = record({"subject": "s", "text": "t"}, "u@bücher.test", sender="news@bücher.test")
    data = build_message(rec, NOW)
    msg = parse(data)
    assert msg["To"] == "u@xn--bcher-kva.test"
    assert "news@xn--bcher-kva.test" in msg["From"]
    assert "@xn--bcher-kva.test>" in msg["Message-ID"]


# -- property ---------------------------------------------------------------

_hostile = st.sampled_from(["\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x7f", ":", ">", "\t"])
_plain = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=100)
_mixed = st.lists(_hostile | _plain, max_size=5).map("".join)
_text = st.one_of(_plain, _plain, _plain, _mixed)  # mostly buildable, a quarter hostile
_valid_name = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True)
_names = st.one_of(
    _valid_name,
    _valid_name,
    st.sampled_from(["X-Tag", "List-Id", "From", "bcc", "Content-Type", "X Bad", "X\tT"]),
    st.text(st.characters(codec="ascii"), max_size=20),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=_text,
    from_name=st.none() | _text,
    extra=st.lists(st.tuples(_names, _text), max_size=2),
    recipients=st.integers(min_value=1, max_value=3),
)
def test_composer_never_injects_a_header(
    subject: str, from_name: str | None, extra: list[tuple[str, str]], recipients: int
) -> None:
    rec = unchecked(subject=subject, from_name=from_name, headers=extra)
    rec = rec.model_copy(
        update={
            "recipients": [
                Recipient.model_construct(address=f"r{i}@dest.test", merge={})
                for i in range(recipients)
            ]
        }
    )
    try:
        data = build_message(rec, NOW)
    except MessageError:
        event("refused")
        return  # refused with a reason: the record goes to the DLQ
    event("built")
    lines = data.split(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in lines)
    assert not any(0 < b < 0x20 and b != 0x09 for b in head(data).replace(b"\r\n", b""))
    names = [n.lower() for n in header_names(data)]
    for own in OWN:
        assert names.count(own.lower()) == 1, (own, names)
    assert "bcc" not in names and "cc" not in names
    assert names == [n.lower() for n in header_names(data)]
    expected = {o.lower() for o in OWN} | {name.lower() for name, _ in extra}
    assert set(names) == expected
    msg = parse(data)
    assert " ".join(str(msg["Subject"]).split()) == " ".join(subject.split())
    if recipients > 1:
        assert msg["To"] == "undisclosed-recipients:;"


def test_utf8_local_part_is_written_raw_not_as_an_encoded_word() -> None:
    """RFC 2047 words are not allowed in an address; RFC 6532 (with SMTPUTF8,
    which the session then requires) carries UTF-8 raw."""
    data = build_message(record({"subject": "s", "text": "t"}, "müller@bücher.test"), NOW)
    assert "To: müller@xn--bcher-kva.test\r\n".encode() in head(data)
    assert b"=?" not in head(data).split(b"\r\nSubject:")[0]


# -- raw messages (submission endpoint) -------------------------------------


def raw_record(raw: str) -> DeliveryRecord:
    return decode_record(
        json.dumps(
            {
                "v": 1,
                "id": "r-1",
                "sender": "a@sender.test",
                "recipients": [{"address": "b@dest.test"}],
                "raw": raw,
                "created_at": NOW,
            }
        ).encode()
    )


def test_raw_message_bcc_is_removed() -> None:
    raw = (
        "From: a@sender.test\nTo: b@dest.test\n"
        "Bcc: hidden@x.test,\n other@x.test\n"  # folded: the continuation goes too
        "Subject: r\n\nbody\n"
    )
    data = build_message(raw_record(raw), NOW)
    assert b"hidden@" not in data and b"other@" not in data
    assert header_names(data) == ["From", "To", "Subject"]


def test_raw_message_lone_cr_becomes_a_line_end() -> None:
    data = build_message(raw_record("Subject: r\r\n\r\nline one\rline two\r\n"), NOW)
    assert data == b"Subject: r\r\n\r\nline one\r\nline two\r\n"


@pytest.mark.parametrize("raw", ["Subject: a\x00b\n\nbody\n", "Subject: r\n\nbo\x00dy\n"])
def test_raw_message_with_nul_is_refused(raw: str) -> None:
    with pytest.raises(MessageError, match="NUL"):
        build_message(raw_record(raw), NOW)


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1b", "\x7f"])
def test_raw_message_header_controls_are_refused(char: str) -> None:
    with pytest.raises(MessageError, match="control character"):
        build_message(raw_record(f"Subject: a{char}b\n\nbody\n"), NOW)
