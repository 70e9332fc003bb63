"""One root for the errors mailpipe raises on purpose, split by what a caller should do.

`TemporaryError`: the same operation may succeed later (a DNS timeout, a lost
connection), so the caller retries or defers. `PermanentError`: the same input
fails again (an undecodable record, an invalid config), so the caller refuses
it, reports it, or dead-letters it, and never retries it as is.

Each concrete error also keeps the stdlib base it always had
(`class WireError(PermanentError, ValueError)`), so existing `except ValueError`
callers keep working and a new caller can catch by intent instead.
"""

from __future__ import annotations


class MailpipeError(Exception):
    """Root of every error mailpipe raises on purpose."""


class TemporaryError(MailpipeError):
    """Retrying later may succeed: defer, back off, try again."""


class PermanentError(MailpipeError):
    """The same input fails again: refuse, report or dead-letter it; never retry as is."""
