"""A relay config document as an operator writes one: the base the contract tests vary."""

from __future__ import annotations

from typing import Any


def relay_config_doc(**extra: Any) -> dict[str, Any]:
    """A valid relay config as plain data; `extra` replaces whole top-level keys."""
    doc: dict[str, Any] = {
        "pool": "mail/news",
        "kafka": {
            "bootstrap_servers": "k:9092",
            "group_id": "g",
            "outbound_topic": "p.outbound",
            "events_topic": "p.events",
            "dlq_topic": "p.dlq",
            "delay_topics": {"1m": "p.delay.1m"},
        },
        "egress": [{"address": "127.0.0.2", "helo": "e.test"}],
    }
    doc.update(extra)
    return doc
