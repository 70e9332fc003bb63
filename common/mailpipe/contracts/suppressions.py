"""What not to send: suppressed addresses (ARCHITECTURE.md, "Suppressed is never sent") and halted
campaigns.

Fed by the Kafka adapter from the compacted suppression topics the relay
config names (ARCHITECTURE.md, "Components"): the pool's own (its
namespace's, or the pool's alone when it has routes), and the ones it obeys
but never writes (the namespace's for a routed pool, the platform's never-mail
list). It is updated locally the moment this relay sees a hard bounce, so a
later record to the same address is skipped even before its own suppression
comes back.

Each address is held per source topic: a tombstone on one topic lifts only
that topic's suppression, so a tenant lifting its own never lifts the
platform's never-mail entry for the same address. A suppression of one
mailing list (an unsubscribe from it) is held under its own key
(`suppression_key(address, list)`) and stops only records of that list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .wire import WireError, decode_suppression, suppression_key

log = logging.getLogger("mailpipe.suppressions")

OWN = ""  # the source of the pool's own suppressions (its topic and its local bounces)


class SuppressionList:
    def __init__(self) -> None:
        self._reasons: dict[str, dict[str, str]] = {}

    def add(
        self, address: str, reason: str, source: str = OWN, mailing_list: str | None = None
    ) -> None:
        self._reasons.setdefault(suppression_key(address, mailing_list), {})[source] = reason

    def lift(self, address: str, source: str = OWN) -> None:
        """`address`: the topic's key (an address, or an address and its list)."""
        key = suppression_key(address)
        sources = self._reasons.get(key)
        if sources is not None:
            sources.pop(source, None)
            if not sources:
                del self._reasons[key]

    def reason(self, address: str, mailing_list: str | None = None) -> str | None:
        """Why `address` is not mailed (for a record of `mailing_list`), or None."""
        sources = self._reasons.get(suppression_key(address))
        if not sources and mailing_list is not None:
            sources = self._reasons.get(suppression_key(address, mailing_list))
        return next(iter(sources.values())) if sources else None

    def is_suppressed(self, address: str) -> bool:
        return suppression_key(address) in self._reasons

    def __len__(self) -> int:
        return len(self._reasons)


class CampaignStates:
    """Campaigns of the pool's namespace suspended or deleted, from its control topic."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}

    def set(self, campaign: str, state: str) -> None:
        if state == "active":
            self._states.pop(campaign, None)
        else:
            self._states[campaign] = state

    def state(self, campaign: str | None) -> str | None:
        return self._states.get(campaign) if campaign else None


# The reason recorded for a suppression whose value could not be decoded.
UNDECODABLE_SUPPRESSION = "undecodable"


def apply_suppression(
    suppressions: SuppressionList, bad: Callable[[], None], source: str = OWN
) -> Callable[[bytes | None, bytes | None, bool], None]:
    """A suppression is never silently skipped: one whose value is undecodable
    still suppresses its key (the address, by the topic's contract), counted and
    logged, because mailing someone who unsubscribed is worse than not mailing
    someone whose suppression was garbled. `source`: the topic, for an obeyed
    one, so its tombstones lift only its own entries."""

    def apply(key: bytes | None, value: bytes | None, live: bool) -> None:
        if key is None:
            return
        address = key.decode("utf-8", "replace")
        if value is None:  # tombstone: the suppression is lifted
            suppressions.lift(address, source)
            return
        try:
            s = decode_suppression(value)
        except WireError as exc:
            bad()
            log.warning("bad suppression for %r, suppressing its key anyway: %s", address, exc)
            suppressions.add(address, UNDECODABLE_SUPPRESSION, source)
            return
        suppressions.add(s.address, s.reason.value, source, s.list)

    return apply
