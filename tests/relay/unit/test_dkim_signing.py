"""The relay's own DKIM signer (`dkim_signing`) against dkimpy: the same key,
selector, time and header list give the same DKIM-Signature, byte for byte,
for the messages the relay builds and for raw ones with every header shape
canonicalisation cares about; and dkimpy verifies each."""

from __future__ import annotations

import base64
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from mailpipe.contracts.config import DKIMSettings
from mailpipe.devstack.certs import write_rsa_key
from mailpipe.relay.dkim_signing import Signer, SigningError, fold, parse_header_block

NOW = 1_700_000_000
HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"]


@pytest.fixture(scope="module")
def key_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dkim") / "k.pem"
    write_rsa_key(path)
    return path


def _signer(key_path: Path, headers: list[str] = HEADERS) -> Signer:
    return Signer(
        DKIMSettings(
            domain="sender.test", selector="s1", private_key_path=str(key_path), headers=headers
        )
    )


def _dns(key_path: Path) -> Any:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def _dkimpy(message: bytes, key_path: Path, headers: list[str] = HEADERS) -> bytes:
    """dkimpy's signature header for `message`, with the names the message has
    (the relay's signer leaves out configured names a message lacks)."""
    parsed, _ = dkim.rfc822_parse(message)
    present = {name.lower() for name, _ in parsed}
    include = [h.encode() for h in headers if h.encode().lower() in present]
    signed: bytes = dkim.sign(
        message, b"s1", b"sender.test", key_path.read_bytes(), include_headers=include
    )
    return signed


MESSAGES = {
    "plain": b"From: a@sender.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nbody\r\n",
    "folded and tabs": (
        b"From: A  \t Person\r\n\t<a@sender.test>  \r\nTo:b@dest.test\r\n"
        b"Subject:   several    spaces\t\there \r\n  and a fold\r\n\r\nbody  with  spaces\r\n"
    ),
    "repeated fields, last signed": (
        b"Subject: first\r\nFrom: a@sender.test\r\nSubject: second\r\nTo: b@dest.test\r\n"
        b"\r\nbody\r\n"
    ),
    "names in any case": b"FROM: a@sender.test\r\nsubject: x\r\nTO: b@dest.test\r\n\r\nb\r\n",
    "trailing empty lines": b"From: a@sender.test\r\n\r\nbody\r\n\r\n\r\n\r\n",
    "body without final line end": b"From: a@sender.test\r\n\r\nno line end",
    "empty body": b"From: a@sender.test\r\nTo: b@dest.test\r\n\r\n",
    "body only line ends": b"From: a@sender.test\r\n\r\n\r\n\r\n",
    "no body at all": b"From: a@sender.test\r\nTo: b@dest.test\r\n",
    "bare LF line ends": b"From: a@sender.test\nSubject: lf\n  folded\n\nbody\nline\n\n",
    "mbox From line": b"From someone Sat Jan  1 00:00:00 2000\r\nFrom: a@sender.test\r\n\r\nx\r\n",
    "long header, no spaces": b"From: a@sender.test\r\nSubject: " + b"x" * 300 + b"\r\n\r\nb\r\n",
    "8-bit value": "From: a@sender.test\r\nSubject: Grüße\r\n\r\nü\r\n".encode(),
    "large body": b"From: a@sender.test\r\nTo: b@dest.test\r\n\r\n"
    + b"".join(b"%d" % (i % 10) + b"x " * 38 + b"\r\n" for i in range(1400))
    + b"\r\n\r\n",
}


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
def test_the_signature_is_dkimpy_s_and_verifies(
    message: bytes, key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: float(NOW))  # dkimpy's t= tag
    ours = _signer(key_path).sign(message, NOW)
    assert ours == _dkimpy(message, key_path) + message
    assert dkim.verify(ours, dnsfunc=_dns(key_path))


def test_a_header_named_twice_in_the_list_signs_the_instance_above(
    key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over-signing (From twice in h=): RFC 6376 5.4.2's bottom-up selection."""
    monkeypatch.setattr(time, "time", lambda: float(NOW))
    headers = ["From", "Subject", "From"]
    message = MESSAGES["repeated fields, last signed"]
    ours = _signer(key_path, headers).sign(message, NOW)
    assert ours == _dkimpy(message, key_path, headers) + message


def test_the_two_steps_may_run_in_another_thread(key_path: Path) -> None:
    """`prepare` on the caller's thread, `finish` (hashing, RSA) on another: the
    same bytes as signing at once."""
    signer = _signer(key_path)
    message = MESSAGES["large body"]
    prepared = signer.prepare(message)
    out: list[bytes] = []
    worker = threading.Thread(target=lambda: out.append(prepared.finish(NOW)))
    worker.start()
    worker.join()
    assert out == [signer.sign(message, NOW)]


@pytest.mark.parametrize(
    "value",
    [b"x", b"a b " * 40, b"y" * 200, b"v=1; a=rsa-sha256; h=from : to : subject; " * 5 + b"\r\n"],
    ids=["short", "spaces", "no spaces", "tag list"],
)
@pytest.mark.parametrize("namelen", [0, 14])
def test_fold_is_dkimpy_s(value: bytes, namelen: int) -> None:
    assert fold(value, namelen) == dkim.fold(value, namelen=namelen)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"Subject: s\r\n\r\nbody\r\n", "without a From header"),
        (b"  continued\r\nFrom: a@sender.test\r\n\r\nb\r\n", "continuation line"),
        (b"From: a@sender.test\r\nnot a field\r\n\r\nb\r\n", "not a header field"),
    ],
    ids=["no From", "starts folded", "no colon"],
)
def test_a_message_that_cannot_be_signed_is_refused_with_why(
    message: bytes, why: str, key_path: Path
) -> None:
    with pytest.raises(SigningError, match=why):
        _signer(key_path).prepare(message)


def _fields_or_none(parse: Any, message: bytes) -> Any:
    try:
        return [tuple(field) for field in parse(message)[0]]
    except Exception:  # each parser's own refusal: only whether it refused matters
        return None


def test_header_lines_are_read_as_dkimpy_reads_them() -> None:
    """Every line of up to 5 characters from an alphabet of the cases that matter
    (colons first and twice, spaces, controls, DEL, 8-bit) gives dkimpy's field
    or dkimpy's refusal."""
    alphabet = [b":", b"a", b" ", b"\x01", b"\x7f", b"\xc3", b"-"]
    for n in range(1, 6):
        for chars in itertools.product(alphabet, repeat=n):
            message = b"From: a@sender.test\r\n" + b"".join(chars) + b"\r\n\r\nbody\r\n"
            ours = _fields_or_none(parse_header_block, message)
            assert ours == _fields_or_none(dkim.rfc822_parse, message), message
