"""The set of addresses never to send to (invariant 6).

Fed from the compacted `mailpipe.suppressions` topic by the Kafka adapter and
updated locally the moment this relay sees a hard bounce, so a later record to
the same address is skipped even before its own suppression comes back.
"""

from __future__ import annotations

from .wire import suppression_key


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
