"""One record on its way through the engine: what was read, what it decoded to.

Shared by the modules a record passes through (intake, ready queues, delay
waiting, dispatch), so none of them imports another just for the type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailpipe.contracts.wire import DeliveryRecord

from .ports import SourceRecord
from .tokens import RecordToken


@dataclass
class Work:
    src: SourceRecord
    record: DeliveryRecord
    gen: int  # the offset tracker's ownership generation of src's partition (see offsets)
    message: bytes | None = None  # built once, at the first attempt that has an egress IP
    # Its rate token for the current attempt, handed out by its lane (`scheduling`)
    # and taken by the transport just before MAIL FROM (`tokens`).
    token: RecordToken | None = None
    # The envelope sender: the record's, or its VERP Return-Path (`stamps`),
    # made with the message.
    sender: str | None = None
    # Its site (`contracts.sites`): what its limits count under and its Kafka key
    # when it is postponed; set by the engine when it reads the record.
    site: str = ""
    domain: str = field(init=False)  # the record's, computed once: every step asks for it

    def __post_init__(self) -> None:
        self.domain = self.record.domain
        if not self.site:
            self.site = self.domain
