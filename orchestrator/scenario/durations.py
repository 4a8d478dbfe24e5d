"""Durations: one typed value for every timeout, deadline and interval in the project.

A duration is written once by a user ("250ms", "2s", "5m"), parsed here once, and passed around as a
`Duration` from then on; nothing else in the tree parses duration strings or multiplies seconds.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

# Each unit as (multiplier, divisor) of seconds, so sub-second units divide by an exact integer:
# 250 / 1000 is the float nearest 0.25, while 250 * 0.001 need not be.
_UNITS: dict[str, tuple[int, int]] = {
    "h": (3600, 1),
    "min": (60, 1),
    "m": (60, 1),
    "s": (1, 1),
    "ms": (1, 1000),
    "us": (1, 1_000_000),
}

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_UNIT = r"us|ms|min|s|m|h"  # longest first where one is a prefix of another
_BARE_RE = re.compile(rf"^\s*(?P<number>{_NUMBER})\s*$")
_PART_RE = re.compile(rf"\s*(?P<number>{_NUMBER})\s*(?P<unit>{_UNIT})\s*")
_ORDER = ("h", "m", "s", "ms", "us")
"""Parts of a compound duration ("1h30m") go from the largest unit down, each once."""

# The same grammar for JSON Schema consumers (editors); they have no whitespace tolerance to offer.
DURATION_PATTERN = rf"^(?:{_NUMBER}|(?:{_NUMBER}(?:{_UNIT}))+)$"


def _bad(value: object) -> ValueError:
    shown = repr(value)
    if len(shown) > 40:  # the message is one line of an error report, whatever was written
        shown = f"{shown[:36]}...{shown[-1]}"
    return ValueError(
        f"bad duration {shown}: expected a number with a unit us, ms, s, m (or min) or h, e.g."
        " 250ms, 2s or 1h30m"
    )


@dataclass(frozen=True, order=True, slots=True)
class Duration:
    """A non-negative, finite span of time in seconds."""

    seconds: float

    def __post_init__(self) -> None:
        # Checked here as well as in parse() so that Duration(-1) from code is as impossible as
        # "-1s" from a file.
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float):
            raise TypeError(f"Duration.seconds must be a number, got {self.seconds!r}")
        if not math.isfinite(self.seconds) or self.seconds < 0:
            raise ValueError(f"a duration must be finite and >= 0, got {self.seconds!r} seconds")
        # Duration(2) and Duration(2.0) must be the same value in every respect, repr included.
        object.__setattr__(self, "seconds", float(self.seconds))

    @classmethod
    def parse(cls, value: str | int | float) -> Duration:
        """Parse "250ms", "2s", "1.5s", "5m" (or "5min"), "1h", "100us", a compound such as
        "1h30m" (largest unit first), or a plain number of seconds."""
        # bool is an int subclass; `timeout: yes` in YAML is a mistake, not one second.
        if isinstance(value, bool):
            raise _bad(value)
        if isinstance(value, int | float):
            if not math.isfinite(value) or value < 0:
                raise _bad(value)
            return cls(float(value))
        if not isinstance(value, str):
            raise _bad(value)
        bare = _BARE_RE.match(value)
        if bare is not None:
            parts = [(bare["number"], "s")]
        else:
            parts, end = [], 0
            for match in _PART_RE.finditer(value):
                if match.start() != end:
                    raise _bad(value)
                parts.append((match["number"], match["unit"]))
                end = match.end()
            if not parts or end != len(value):
                raise _bad(value)
            order = [_ORDER.index("m" if unit == "min" else unit) for _, unit in parts]
            if any(a >= b for a, b in itertools.pairwise(order)):
                raise _bad(value)  # "30m1h", "1m1m": a typo, not a duration
        seconds = 0.0
        for number, unit in parts:
            multiplier, divisor = _UNITS[unit]
            seconds += float(number) * multiplier / divisor
        if not math.isfinite(seconds):
            raise _bad(value)
        return cls(seconds)

    @property
    def ms(self) -> float:
        """The duration in milliseconds."""
        return self.seconds * 1000.0

    def __str__(self) -> str:
        # Hours and minutes only when whole ("5m", never "1.6666666666666667m"); otherwise the
        # largest of s, ms, us that keeps the number at or above 1 ("1.5s", "250ms", "100us").
        seconds = self.seconds
        if seconds >= 3600 and seconds % 3600 == 0:
            unit = "h"
        elif seconds >= 60 and seconds % 60 == 0:
            unit = "m"
        elif seconds >= 1 or seconds == 0:
            unit = "s"
        elif seconds >= 1e-3:
            unit = "ms"
        else:
            unit = "us"
        multiplier, divisor = _UNITS[unit]
        text = f"{_number(seconds * divisor / multiplier)}{unit}"
        # Rounding in the unit change can cost the last bit; a rendering that does not parse back
        # to this exact value falls back to plain seconds, which always does.
        if Duration.parse(text).seconds != seconds:
            return f"{_number(seconds)}s"
        return text

    def __repr__(self) -> str:
        return f"Duration({self.seconds!r})"

    @classmethod
    def _validate(cls, value: object) -> Duration:
        if isinstance(value, Duration):
            return value
        if isinstance(value, str | int | float):
            try:
                return cls.parse(value)
            except ValueError as exc:
                message = str(exc)
        else:
            message = str(_bad(value))
        # A custom error keeps pydantic's "Value error, " prefix out of the user's message; the
        # message goes in as context so that braces in the user's input are never template fields.
        raise PydanticCustomError("duration", "{reason}", {"reason": message})

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: object, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": 'a duration such as "250ms", "2s", "5m", "1h30m", or a number of'
            " seconds",
        }


def _number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
