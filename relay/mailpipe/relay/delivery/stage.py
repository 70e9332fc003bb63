"""The SMTP stage whose reply decided a recipient: part of every delivery result.

Its own module because the session (which sees the transaction's stages) and
the transport (which synthesizes replies for DNS, connection and TLS
failures) both name stages, and because classification needs it: see
`Stage`.
"""

from __future__ import annotations

import enum


class Stage(enum.StrEnum):
    """Where the reply that decided a recipient came from. The same code means
    different things by stage (a 5.1.1 greeting refuses the host, not the
    mailbox; a 5.7.1 after RCPT refuses that recipient, after MAIL the sender),
    so the transport reports it with every reply (`TransactionResult.detail`)."""

    DNS = "dns"  # synthesized: the domain has nowhere to deliver, or DNS failed
    CONNECT = "connect"  # synthesized: no connection (refused, timeout, unreachable)
    GREETING = "greeting"  # the server's banner refused us
    EHLO = "ehlo"
    TLS = "tls"  # synthesized: TLS required and absent or failed
    LOCAL = "local"  # synthesized: refused without asking (SIZE, SMTPUTF8 not offered)
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the reply to DATA itself
    MESSAGE = "message"  # the reply after the message's final dot
    LOST = "lost"  # synthesized: the connection broke mid-transaction
