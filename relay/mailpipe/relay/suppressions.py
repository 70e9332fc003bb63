"""What not to send: suppressed addresses (invariant 6) and halted campaigns.

Fed from the compacted `mailpipe.suppressions` topic by the Kafka adapter and
updated locally the moment this relay sees a hard bounce, so a later record to
the same address is skipped even before its own suppression comes back.
"""

from __future__ import annotations

from mailpipe.contracts.wire import suppression_key


class SuppressionList:
    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}

    def add(self, address: str, reason: str) -> None:
        self._reasons[suppression_key(address)] = reason

    def lift(self, address: str) -> None:
        self._reasons.pop(suppression_key(address), None)

    def reason(self, address: str) -> str | None:
        return self._reasons.get(suppression_key(address))

    def is_suppressed(self, address: str) -> bool:
        return suppression_key(address) in self._reasons

    def __len__(self) -> int:
        return len(self._reasons)


class CampaignStates:
    """Campaigns suspended or deleted in the cluster, from `mailpipe.campaigns`."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}

    def set(self, campaign: str, state: str) -> None:
        if state == "active":
            self._states.pop(campaign, None)
        else:
            self._states[campaign] = state

    def state(self, campaign: str | None) -> str | None:
        return self._states.get(campaign) if campaign else None
