"""Auto-replies and out-of-office mail: returned to the Return-Path, never a bounce.

A vacation responder answers to the envelope sender, which is our VERP
address, so out-of-office replies arrive at the bounce receiver beside the
DSNs. Counting one as a bounce would suppress a perfectly good mailbox (its
owner is on holiday). RFC 3834 says how an automatic responder marks its
reply (`Auto-Submitted: auto-replied`); older ones use `X-Autoreply`,
`X-Autorespond`, `Precedence: auto_reply`, Microsoft's
`X-MS-Exchange-Inbox-Rules-Loop` or just a subject ("Out of Office",
"Automatic reply", "Abwesenheitsnotiz", "Réponse automatique"...).

A DSN is automatic too (Postfix and Exim put `Auto-Submitted: auto-replied`
on their bounces), so a message from a mailer daemon, or a delivery report,
is never an auto-reply here: the caller tries the report parsers first.
Pure: a parsed message in, the reason it is an auto-reply (or None) out.
"""

from __future__ import annotations

import re
from email.message import Message

from .mime import clean

# Subjects of vacation and auto-reply messages in the languages most mail is in.
VACATION_SUBJECT = re.compile(
    r"^(?:(?:re|aw|fw|fwd|tr|sv|antw)\s*:\s*)*"
    r"(out of (the )?office|automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|"
    r"vacation|on vacation|away from (the )?office|abwesenheit|automatische antwort|"
    r"r[ée]ponse automatique|absence|respuesta autom[áa]tica|fuera de la oficina|"
    r"risposta automatica|fuori ufficio|automatisch antwoord|afwezig|"
    r"resposta autom[áa]tica|autosvar|automaattinen vastaus|automatyczna odpowied)",
    re.IGNORECASE,
)
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery (system|subsystem)", re.IGNORECASE)


def is_from_daemon(msg: Message) -> bool:
    """From a mail system rather than a person's responder (bounces are)."""
    return bool(_DAEMON.search(clean(msg.get("from"), 400)))


def auto_reply_reason(msg: Message) -> str | None:
    """Why `msg` is an automatic reply (a fixed word), or None."""
    if msg.get_content_type() == "multipart/report" or is_from_daemon(msg):
        return None
    auto = clean(msg.get("auto-submitted"), 100).lower()
    if auto.startswith("auto-replied"):
        return "auto_submitted"
    if msg.get("x-autoreply") is not None or msg.get("x-autorespond") is not None:
        return "x_autoreply"
    if clean(msg.get("precedence"), 40).lower() == "auto_reply":
        return "precedence"
    if msg.get("x-ms-exchange-inbox-rules-loop") is not None:
        return "exchange_inbox_rule"
    if VACATION_SUBJECT.search(clean(msg.get("subject"), 300)):
        return "vacation_subject"
    if auto.startswith("auto-generated"):
        return "auto_submitted"
    return None
