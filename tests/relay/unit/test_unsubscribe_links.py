"""The pool's one-click unsubscribe URL in a composed message (issue 20, item 5):
signed per recipient by the relay, verifiable by the endpoint, under a DKIM
signature whose h= tag covers List-Unsubscribe and List-Unsubscribe-Post
(RFC 8058 3.3), and list-scoped suppressions in the relay."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import time
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from mailpipe.contracts.config import DKIMSettings, UnsubscribeSettings
from mailpipe.contracts.feedback_token import Purpose, keys_from_directory, verify
from mailpipe.contracts.suppressions import SuppressionList
from mailpipe.contracts.wire import DeliveryRecord, decode_record, suppression_key
from mailpipe.devstack.certs import write_rsa_key
from mailpipe.relay.message import MessageError, Signer, build_message
from mailpipe.relay.unsubscribe_links import UnsubscribeLinks

BASE = "https://unsub.sender.test/u/"


def record(**extra: Any) -> DeliveryRecord:
    rec: dict[str, Any] = {
        "v": 1,
        "id": "uid-42",
        "campaign": "mail/spring",
        "variant": "b",
        "sender": "news@sender.test",
        "recipients": [{"address": "Ann@dest.test"}],
        "content": {"subject": "Hello", "text": "Hi\n"},
        "list_unsubscribe": {"endpoint": True, "list": "news"},
        "created_at": 1_700_000_000.0,
    }
    rec.update(extra)
    return decode_record(json.dumps(rec).encode())


@pytest.fixture
def links(tmp_path: Path) -> UnsubscribeLinks:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ka").write_bytes(b"k" * 32)
    return UnsubscribeLinks(UnsubscribeSettings(base_url=BASE, keys_dir=str(keys)), "mail/pool")


def _headers(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.default)


def test_the_relay_signs_the_recipients_token_into_the_endpoint_url(
    links: UnsubscribeLinks, tmp_path: Path
) -> None:
    now = time.time()
    msg = _headers(build_message(record(), now, links=links))
    header = str(msg["List-Unsubscribe"]).strip()
    assert header.startswith(f"<{BASE}") and header.endswith(">")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = header[len(BASE) + 1 : -1]
    payload = verify(
        token,
        Purpose.UNSUBSCRIBE,
        keys_from_directory(tmp_path / "keys"),
        now=now,
        namespace="mail",
    )
    assert (payload.pool, payload.campaign, payload.variant) == ("pool", "spring", "b")
    assert (payload.recipient, payload.message_id, payload.mailing_list) == (
        "Ann@dest.test",
        "uid-42",
        "news",
    )
    assert payload.issued_at == int(now)


def test_a_users_own_url_is_kept_as_written(links: UnsubscribeLinks) -> None:
    own = record(list_unsubscribe={"url": "https://example.com/out?id=7"})
    msg = _headers(build_message(own, time.time(), links=links))
    assert str(msg["List-Unsubscribe"]) == "<https://example.com/out?id=7>"


def test_an_endpoint_record_without_an_endpoint_or_with_several_recipients_is_refused(
    links: UnsubscribeLinks,
) -> None:
    with pytest.raises(MessageError, match="has none"):
        build_message(record(), time.time())
    several = record(recipients=[{"address": "a@dest.test"}, {"address": "b@dest.test"}])
    with pytest.raises(MessageError, match="per recipient"):
        build_message(several, time.time(), links=links)


def _tags(signature: str) -> dict[str, str]:
    flat = "".join(signature.split())
    return dict(part.split("=", 1) for part in flat.split(";") if "=" in part)


def test_the_dkim_signature_covers_both_list_unsubscribe_headers(
    links: UnsubscribeLinks, tmp_path: Path
) -> None:
    key = write_rsa_key(tmp_path / "k.pem")
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    signer = Signer(
        DKIMSettings(domain="sender.test", selector="s1", private_key_path=str(tmp_path / "k.pem"))
    )
    data = build_message(record(), time.time(), signer, links=links)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.sender.test."
        return txt

    assert dkim.verify(data, dnsfunc=dns)
    signed = {h.lower() for h in _tags(str(_headers(data)["DKIM-Signature"]))["h"].split(":")}
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= signed
    # and a changed URL breaks the signature: the header really is covered
    tampered = data.replace(BASE.encode(), b"https://evil.test/u/x")
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_a_list_suppression_stops_that_lists_records_only() -> None:
    held = SuppressionList()
    held.add("Ann@dest.test", "unsubscribe", mailing_list="news")
    assert held.reason("ann@dest.test", "news") == "unsubscribe"
    assert held.reason("ann@dest.test", "offers") is None
    assert held.reason("ann@dest.test") is None
    held.lift(suppression_key("ann@dest.test", "news"))  # the topic's tombstone
    assert held.reason("ann@dest.test", "news") is None
