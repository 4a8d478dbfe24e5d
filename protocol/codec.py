"""The msgpack codec for bodies and whole frames.

A frame on the wire is `[header][body]` (the ROUTER adds the routing id in front). Decoding
checks the frame count and sizes, then the header, then the body against its kind's model, and
raises DecodeError for anything wrong: never another exception type.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError

from protocol.bodies import BODY_MODELS, KIND_OF, WireModel
from protocol.constants import MAX_FRAME_BYTES
from protocol.errors import DecodeError, EncodeError, RejectReason
from protocol.header import Header, decode_header
from protocol.kinds import Kind
from protocol.packing import pack, unpack

M = TypeVar("M", bound=WireModel)


def encode_body(body: WireModel) -> bytes:
    """The body's msgpack bytes; EncodeError if it cannot be carried (see EncodeError)."""
    try:
        raw = pack(body.model_dump(mode="json"))
    except (OverflowError, ValueError, TypeError) as exc:
        raise EncodeError(f"{type(body).__name__} cannot be encoded: {exc}") from exc
    if len(raw) > MAX_FRAME_BYTES:
        raise EncodeError(
            f"{type(body).__name__} is {len(raw)} bytes encoded, over the frame limit of "
            f"{MAX_FRAME_BYTES} bytes"
        )
    return raw


def kind_of(body: WireModel) -> Kind:
    return KIND_OF[type(body)]


def decode_body(kind: Kind, frame: bytes) -> WireModel:
    """Decode a body frame as the model of `kind`."""
    return decode_body_as(BODY_MODELS[kind], frame)


def decode_body_as(model: type[M], frame: bytes) -> M:
    if len(frame) > MAX_FRAME_BYTES:
        raise DecodeError(RejectReason.OVERSIZE, f"body of {len(frame)} bytes")
    try:
        raw = unpack(frame)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise DecodeError(RejectReason.MALFORMED, f"body is not msgpack: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise DecodeError(
            RejectReason.BAD_BODY, f"{model.__name__}.{where}: {first['msg']}"
        ) from None
    except Exception as exc:  # a validator tripping over a hostile value is still bad input
        raise DecodeError(RejectReason.BAD_BODY, f"{model.__name__}: {exc}") from None


def split_frames(frames: list[bytes]) -> tuple[Header, bytes]:
    """Check frame count and decode the header of `[header][body]`; the body stays raw."""
    if len(frames) != 2:
        raise DecodeError(RejectReason.FRAME_COUNT, f"{len(frames)} frames, expected 2")
    header_frame, body_frame = frames
    if len(body_frame) > MAX_FRAME_BYTES:
        raise DecodeError(RejectReason.OVERSIZE, f"body of {len(body_frame)} bytes")
    return decode_header(header_frame), body_frame


def decode_frames(frames: list[bytes]) -> tuple[Header, WireModel]:
    """Decode `[header][body]` completely."""
    header, body_frame = split_frames(frames)
    return header, decode_body(header.kind, body_frame)
