"""The log line format of mailpipe's processes: one JSON object per line.

Shared by the relay and the inbound endpoints, so a log pipeline parses one
format, with a record's message id, domain and IP as fields when given as
`extra`."""

from __future__ import annotations

import json
import logging
from typing import Any

__all__ = ["JSONFormatter"]


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with message id, domain and IP when given as extras."""

    FIELDS = ("message_id", "domain", "egress_ip", "pool", "relay_id")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in self.FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)
