"""The pool's one-click unsubscribe URL in a composed message (issue 20, item 5):
signed per recipient by the relay, verifiable by the endpoint, under a DKIM
signature whose h= tag covers List-Unsubscribe and List-Unsubscribe-Post
(RFC 8058 3.3), and list-scoped suppressions in the relay. With a feedback
receiver, a `mailto:u-<token>@<bounce domain>` beside the URL (RFC 2369)."""

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

from mailpipe.contracts.config import DKIMSettings, FeedbackSettings, UnsubscribeSettings
from mailpipe.contracts.feedback_token import (
    UNSUBSCRIBE_PREFIX,
    Purpose,
    TokenError,
    keys_from_directory,
    token_of_address,
    verify,
)
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


@pytest.mark.parametrize("with_mailto", [False, True], ids=["url", "url-and-mailto"])
def test_the_dkim_signature_covers_both_list_unsubscribe_headers(
    links: UnsubscribeLinks, tmp_path: Path, feedback_keys: Path, with_mailto: bool
) -> None:
    key = write_rsa_key(tmp_path / "k.pem")
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    signer = Signer(
        DKIMSettings(domain="sender.test", selector="s1", private_key_path=str(tmp_path / "k.pem"))
    )
    chosen = links_with_mailto(tmp_path, feedback_keys) if with_mailto else links
    data = build_message(record(), time.time(), signer, links=chosen)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.sender.test."
        return txt

    assert dkim.verify(data, dnsfunc=dns)
    signed = {h.lower() for h in _tags(str(_headers(data)["DKIM-Signature"]))["h"].split(":")}
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= signed
    # and a changed URL or mailto breaks the signature: the header really is covered
    tampered = data.replace(BASE.encode(), b"https://evil.test/u/x")
    assert not dkim.verify(tampered, dnsfunc=dns)
    if with_mailto:
        tampered = data.replace(b"mailto:u-", b"mailto:x-")
        assert tampered != data and not dkim.verify(tampered, dnsfunc=dns)


def test_a_list_suppression_stops_that_lists_records_only() -> None:
    held = SuppressionList()
    held.add("Ann@dest.test", "unsubscribe", mailing_list="news")
    assert held.reason("ann@dest.test", "news") == "unsubscribe"
    assert held.reason("ann@dest.test", "offers") is None
    assert held.reason("ann@dest.test") is None
    held.lift(suppression_key("ann@dest.test", "news"))  # the topic's tombstone
    assert held.reason("ann@dest.test", "news") is None


BOUNCE_DOMAIN = "bounce.sender.test"


@pytest.fixture
def feedback_keys(tmp_path: Path) -> Path:
    keys = tmp_path / "feedback-keys"
    keys.mkdir()
    (keys / "kf").write_bytes(b"f" * 32)  # another Secret than the endpoint's
    return keys


def links_with_mailto(tmp_path: Path, feedback_keys: Path) -> UnsubscribeLinks:
    feedback = FeedbackSettings(bounce_domain=BOUNCE_DOMAIN, keys_path=str(feedback_keys))
    settings = UnsubscribeSettings(base_url=BASE, keys_dir=str(tmp_path / "keys"))
    return UnsubscribeLinks(settings, "mail/pool", feedback)


def _targets(header: str) -> list[str]:
    return [t.strip().removeprefix("<").removesuffix(">") for t in header.split(",")]


def test_with_a_feedback_receiver_a_mailto_at_the_bounce_domain_follows_the_url(
    links: UnsubscribeLinks, tmp_path: Path, feedback_keys: Path
) -> None:
    now = time.time()
    with_mailto = links_with_mailto(tmp_path, feedback_keys)
    msg = _headers(build_message(record(), now, links=with_mailto))
    url, mailto = _targets(str(msg["List-Unsubscribe"]))
    assert url.startswith(BASE)  # RFC 8058's https first: clients take the leftmost they can
    assert mailto.startswith("mailto:u-") and mailto.endswith("@" + BOUNCE_DOMAIN)
    token = token_of_address(mailto.removeprefix("mailto:"), BOUNCE_DOMAIN, UNSUBSCRIBE_PREFIX)
    assert token is not None
    # Signed with the feedback receiver's keys, for unsubscribing, naming what the URL names.
    held = keys_from_directory(feedback_keys)
    by_mail = verify(token, Purpose.UNSUBSCRIBE, held, now=now, namespace="mail")
    by_url = verify(
        url[len(BASE) :], Purpose.UNSUBSCRIBE, keys_from_directory(tmp_path / "keys"), now=now
    )
    assert by_mail == by_url and by_mail.mailing_list == "news"
    with pytest.raises(TokenError):  # it is no return path
        verify(token, Purpose.BOUNCE, held, now=now)
    # Without a feedback receiver there is no mailto; a record's own mailto stays its own.
    plain = str(_headers(build_message(record(), now, links=links))["List-Unsubscribe"])
    assert len(_targets(plain)) == 1 and "mailto" not in plain
    own = record(list_unsubscribe={"endpoint": True, "mailto": "leave@sender.test"})
    header = str(_headers(build_message(own, now, links=with_mailto))["List-Unsubscribe"])
    assert _targets(header)[1] == "mailto:leave@sender.test"


def test_one_secret_for_both_signs_one_token_for_url_and_mailto(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ka").write_bytes(b"k" * 32)
    feedback = FeedbackSettings(bounce_domain=BOUNCE_DOMAIN, keys_path=str(keys))
    settings = UnsubscribeSettings(base_url=BASE, keys_dir=str(keys))
    targets = UnsubscribeLinks(settings, "mail/pool", feedback).targets(record(), time.time())
    assert targets.mailto is not None
    token = token_of_address(targets.mailto, BOUNCE_DOMAIN, UNSUBSCRIBE_PREFIX)
    assert targets.url == BASE + str(token)
