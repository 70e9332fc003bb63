"""A campaign's complaint rate and what it calls for: nothing, a warning, a pause.

Mailbox providers judge a sender by the share of its mail that recipients
mark as spam: Gmail and Yahoo require bulk senders to stay under 0.3% and
Gmail asks for under 0.1%. A campaign that crosses the line harms the pool's
IPs and domain for every campaign after it, so the operator pauses it (the
campaign's own `suspend`, which holds the fan-out and the records already on
Kafka) and says why in a condition and an Event; from the warning level it
says so without pausing.

The rate is complaints over delivered recipients (a complaint can only come
from a delivered message). Below `minDelivered` deliveries the rate is shown
but never pauses: one early complaint among ten deliveries is 10% and says
nothing yet.

A campaign someone resumed after a pause is not paused again for the
complaints already seen: only a new complaint while the rate is still over
the threshold pauses it again (raise `pauseAtPercent` to let it go on).

Pure: the handler passes the counts and the campaign's settings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .models import ComplaintSettings


class Level(enum.StrEnum):
    """The condition ComplaintRateHigh's reason."""

    OK = "BelowWarning"
    WARNING = "AboveWarning"
    PAUSE = "AbovePauseThreshold"


@dataclass(frozen=True)
class Verdict:
    level: Level
    rate_percent: float
    message: str
    pause: bool  # pause now (it is not paused, and this is news)


def rate_text(percent: float) -> str:
    return f"{percent:.2f}%"


def judge(
    complained: int,
    delivered: int,
    settings: ComplaintSettings,
    *,
    suspended: bool,
    paused_at_complaints: int | None,
) -> Verdict:
    """What `complained` of `delivered` calls for. `paused_at_complaints`: the
    complaints counted when the operator last paused the campaign (None: never)."""
    percent = 100.0 * complained / delivered if delivered else 0.0
    seen = f"{complained} complaints of {delivered} delivered ({rate_text(percent)})"
    enough = delivered >= settings.min_delivered
    if enough and percent >= settings.pause_at_percent:
        news = paused_at_complaints is None or complained > paused_at_complaints
        message = (
            f"complaint rate {seen} reached the pause threshold "
            f"{settings.pause_at_percent:g}%: paused; resume with spec.suspend=false "
            "(a new complaint pauses it again while the rate stays over; "
            "raise spec.complaints.pauseAtPercent to go on)"
        )
        return Verdict(Level.PAUSE, percent, message, pause=news and not suspended)
    if percent >= settings.warn_at_percent and complained:
        note = "" if enough else f"; pauses only after {settings.min_delivered} deliveries"
        message = (
            f"complaint rate {seen} is over the warning level {settings.warn_at_percent:g}%"
            f" (pause at {settings.pause_at_percent:g}%){note}"
        )
        return Verdict(Level.WARNING, percent, message, pause=False)
    return Verdict(Level.OK, percent, f"complaint rate {seen}", pause=False)
