"""SMTP delivery: MX resolution and the aiosmtplib transport.

The only layer of the relay that talks SMTP or DNS; it implements
`ports.Transport` and turns every failure into an SMTP reply.
"""

from .mx import MXResolver, Route
from .transport import SMTPTransport

__all__ = ["MXResolver", "Route", "SMTPTransport"]
