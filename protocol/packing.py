"""The one place msgpack is called, with types (msgpack ships no annotations)."""

from __future__ import annotations

from typing import cast

import msgpack


def pack(obj: object) -> bytes:
    # packb always returns bytes; msgpack has no stubs, so the type is restated here.
    return cast(bytes, msgpack.packb(obj, use_bin_type=True))


def unpack(data: bytes) -> object:
    """Decode one msgpack object; raises whatever msgpack raises for bad input."""
    return cast(object, msgpack.unpackb(data, raw=False, strict_map_key=True))
