"""Delay steps: the names of a pool's delay topics ('30s', '1m', '1h', '1d').

A step is both a topic-name suffix (`<pool>.delay.1m`) and a duration the
relay schedules by, so it is parsed once, here, wherever it enters: the
SendingPool CRD refuses a bad step at `kubectl apply` (the JSON Schema
`pattern` below), and the relay config refuses it in `parse_config`. The relay
therefore never meets `5 minutes` at start or half-way through a reload.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

# ASCII digits only (Python's \d also matches other scripts' digits), no zero
# step (a record would come straight back), no leading zero (one name per step).
DELAY_STEP_PATTERN = r"^[1-9][0-9]*[smhd]$"
_STEP = re.compile(DELAY_STEP_PATTERN)
_UNIT_SECONDS = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400})


class DelayStep(str):
    """A validated delay step such as '1m'; a `str`, so it names topics as is."""

    __slots__ = ()

    def __new__(cls, text: str) -> DelayStep:
        if not isinstance(text, str) or not _STEP.match(text):
            raise ValueError(f"delay step {text!r} is not like 30s, 1m, 1h or 1d")
        return super().__new__(cls, text)

    @property
    def seconds(self) -> int:
        """'1m' -> 60."""
        return int(self[:-1]) * _UNIT_SECONDS[self[-1]]

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # Validated by __new__ (its message names the accepted forms); dumped as plain text.
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "pattern": DELAY_STEP_PATTERN}
