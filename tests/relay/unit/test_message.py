"""The message composer, checked against the standard library's own parser
(policy.default: RFC 2047 decoding, MIME structure, transfer decoding) and
DKIM signatures checked with dkimpy's verifier."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import time
from email.message import EmailMessage, MIMEPart
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from mailpipe.contracts.config import DKIMSettings
from mailpipe.contracts.wire import DeliveryRecord, decode_record
from mailpipe.devstack.certs import write_rsa_key
from mailpipe.relay.message import MessageError, Signer, build_message, openssl_rsa_sign

NOW = 1_700_000_000.0


def record(content: dict[str, Any], **extra: Any) -> DeliveryRecord:
    rec: dict[str, Any] = {
        "v": 1,
        "id": "camp-42",
        "sender": "news@sender.test",
        "recipients": [{"address": "ann@dest.test"}],
        "content": content,
        "created_at": NOW,
    }
    rec.update(extra)
    return decode_record(json.dumps(rec).encode())


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects, msg.defects
    return msg


def content(part: MIMEPart) -> str:
    """Decoded text of a part; the parser keeps the wire's CRLF line ends."""
    text: str = part.get_content()
    return text.replace("\r\n", "\n")


def lines_ok(data: bytes) -> None:
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_plain_ascii_message_headers_and_7bit_body() -> None:
    data = build_message(record({"subject": "Hello", "text": "line one\nline two\n"}), NOW)
    lines_ok(data)
    msg = parse(data)
    assert msg["From"] == "news@sender.test"
    assert msg["To"] == "ann@dest.test"
    assert msg["Subject"] == "Hello"
    assert msg["Message-ID"] == "<camp-42@sender.test>"
    assert email.utils.parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert msg.get_content_type() == "text/plain"
    assert content(msg) == "line one\nline two\n"


def test_non_ascii_headers_are_rfc2047_and_body_quoted_printable() -> None:
    subject = "Grüße aus Köln — 50 % Rabatt auf alles, nur heute und nur für Sie, ehrlich"
    text = "Schöne Grüße\nzweite Zeile\n"
    data = build_message(
        record({"subject": subject, "text": text, "from_name": "Bäckerei Müller"}), NOW
    )
    lines_ok(data)
    assert data.isascii()
    msg = parse(data)
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].display_name == "Bäckerei Müller"
    assert msg["From"].addresses[0].addr_spec == "news@sender.test"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(msg) == text


def test_long_lines_are_encoded_and_long_headers_folded() -> None:
    text = "x" * 5000 + "\n. a line starting with a dot\n"
    subject = " ".join(["word"] * 60)
    data = build_message(record({"subject": subject, "text": text}), NOW)
    lines_ok(data)
    assert all(len(line) <= 78 for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"))
    msg = parse(data)
    assert msg["Subject"] == subject
    assert content(msg) == text


def test_crlf_and_lone_cr_in_bodies_become_crlf() -> None:
    data = build_message(record({"subject": "s", "text": "a\r\nb\rc\nd"}), NOW)
    lines_ok(data)
    assert content(parse(data)) == "a\nb\nc\nd\n"


def test_text_and_html_make_multipart_alternative() -> None:
    html = "<p>Hallo <b>Jürgen</b></p>\n"
    data = build_message(record({"subject": "s", "text": "Hallo Jürgen\n", "html": html}), NOW)
    lines_ok(data)
    msg = parse(data)
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",))
    rich = msg.get_body(("html",))
    assert plain is not None and rich is not None
    assert content(plain).rstrip("\n") == "Hallo Jürgen"
    assert content(rich).rstrip("\n") == html.rstrip("\n")


def test_list_unsubscribe_reply_to_and_extra_headers() -> None:
    data = build_message(
        record(
            {
                "subject": "s",
                "text": "t",
                "reply_to": "help@sender.test",
                "headers": [["X-Campaign", "spring"], ["X-Note", "Überall"]],
            },
            list_unsubscribe={
                "url": "https://u.sender.test/u/abc",
                "mailto": "unsub@sender.test",
                "one_click": True,
            },
        ),
        NOW,
    )
    msg = parse(data)
    assert msg["List-Unsubscribe"] == ("<https://u.sender.test/u/abc>, <mailto:unsub@sender.test>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Reply-To"] == "help@sender.test"
    assert msg["X-Campaign"] == "spring"
    assert msg["X-Note"] == "Überall"


def test_unfoldable_header_is_a_message_error() -> None:
    with pytest.raises(MessageError, match="Subject"):
        build_message(record({"subject": "y" * 1200, "text": "t"}), NOW)


def test_raw_messages_pass_through_with_crlf() -> None:
    raw = "From: a@sender.test\nTo: b@dest.test\nSubject: raw\n\nbody\n"
    data = build_message(_raw_record(raw), NOW)
    assert data == raw.replace("\n", "\r\n").encode()


def _raw_record(raw: str) -> DeliveryRecord:
    rec = {
        "v": 1,
        "id": "r-1",
        "sender": "a@sender.test",
        "recipients": [{"address": "b@dest.test"}],
        "raw": raw,
        "created_at": NOW,
    }
    return decode_record(json.dumps(rec).encode())


def test_openssl_rsa_step_gives_dkimpy_s_bytes(tmp_path: Path) -> None:
    key = write_rsa_key(tmp_path / "k.pem")
    parsed = dkim.crypto.parse_pem_private_key((tmp_path / "k.pem").read_bytes())
    for data in (b"", b"one message", b"x" * 5000):
        digest = hashlib.sha256(data)
        ours = openssl_rsa_sign(key, b"rsa-sha256", digest.digest())
        assert ours == dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, parsed)


def test_the_signer_writes_dkimpy_s_header_and_patches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenSSL signer's DKIM-Signature is byte for byte dkimpy's own, and
    dkimpy's module is left as it was: another signer in the same process (a
    second relay, a test) gets dkimpy unchanged."""
    write_rsa_key(tmp_path / "k.pem")
    rsa_step = dkim.RSASSA_PKCS1_v1_5_sign
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # the t= tag
    settings = DKIMSettings(
        domain="sender.test", selector="s1", private_key_path=str(tmp_path / "k.pem")
    )
    data = build_message(record({"subject": "Grüße", "text": "body ü\n" * 3}), NOW)
    signed = Signer(settings).sign(data)
    block = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    present = {line.split(b":", 1)[0].lower() for line in block if not line[:1].isspace()}
    include = [h.encode() for h in settings.headers if h.encode().lower() in present]
    assert {b"from", b"subject"} <= {h.lower() for h in include}
    expected = dkim.sign(
        data, b"s1", b"sender.test", (tmp_path / "k.pem").read_bytes(), include_headers=include
    )
    assert signed == expected + data
    assert dkim.RSASSA_PKCS1_v1_5_sign is rsa_step
    assert dkim.crypto.RSASSA_PKCS1_v1_5_sign is rsa_step


def _dns_for(key: Any) -> Any:
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    return lambda name, timeout=5: txt


def test_the_key_is_parsed_once_not_per_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dkimpy's sign() re-parses the PEM key with its pure-Python ASN.1 reader on
    every call (about 450 us a message); the signer parses it once, so signing
    works with dkimpy's key parser gone, and the file may go after start."""
    key = write_rsa_key(tmp_path / "k.pem")
    signer = Signer(
        DKIMSettings(domain="sender.test", selector="s1", private_key_path=str(tmp_path / "k.pem"))
    )
    (tmp_path / "k.pem").unlink()

    def refused(_: bytes) -> None:
        raise AssertionError("the PEM key was parsed again for a signature")

    monkeypatch.setattr(dkim, "parse_pem_private_key", refused)
    monkeypatch.setattr(dkim.crypto, "parse_pem_private_key", refused)
    data = build_message(record({"subject": "s", "text": "body\n"}), time.time(), signer)
    assert dkim.verify(data, dnsfunc=_dns_for(key))


def test_a_100_kb_message_gets_dkimpy_s_signature_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the header block is parsed: the signature over a 100 KB body (with
    trailing blank lines, which simple body canonicalisation strips) is byte for
    byte the one dkimpy computes from the whole message."""
    key = write_rsa_key(tmp_path / "k.pem")
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # the t= tag
    settings = DKIMSettings(
        domain="sender.test", selector="s1", private_key_path=str(tmp_path / "k.pem")
    )
    text = "".join(f"{i % 10}" + "x " * 38 + "\n" for i in range(1300)) + "\n\n"
    data = build_message(record({"subject": "big", "text": text}), NOW)
    assert len(data) > 100_000
    signed = Signer(settings).sign(data)
    include = [b"From", b"To", b"Subject", b"Date", b"Message-ID", b"MIME-Version"]
    include.append(b"Content-Type")
    pem = (tmp_path / "k.pem").read_bytes()
    assert signed == dkim.sign(data, b"s1", b"sender.test", pem, include_headers=include) + data
    assert dkim.verify(signed, dnsfunc=_dns_for(key))


def test_a_message_without_from_is_refused_for_signing(tmp_path: Path) -> None:
    """A raw message the pool would sign without From: a MessageError (the record
    goes to the DLQ with the reason), not another exception."""
    write_rsa_key(tmp_path / "k.pem")
    signer = Signer(
        DKIMSettings(domain="sender.test", selector="s1", private_key_path=str(tmp_path / "k.pem"))
    )
    with pytest.raises(MessageError, match=r"cannot sign message r-1: .*without a From header"):
        build_message(_raw_record("Subject: s\n\nbody\n"), NOW, signer)


def test_dkim_signature_verifies(tmp_path: Path) -> None:
    key = write_rsa_key(tmp_path / "k.pem")
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    signer = Signer(
        DKIMSettings(domain="sender.test", selector="s1", private_key_path=str(tmp_path / "k.pem"))
    )
    data = build_message(
        record(
            {"subject": "Grüße", "text": "body ü\n" * 3, "html": "<p>x</p>"},
            list_unsubscribe={"url": "https://u.sender.test/u/1"},
        ),
        time.time(),
        signer,
    )
    assert data.startswith(b"DKIM-Signature:")

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.sender.test."
        return bytes(txt)

    assert dkim.verify(data, dnsfunc=dns)
    signed = parse(data)["DKIM-Signature"]
    assert "list-unsubscribe" in signed.lower()
