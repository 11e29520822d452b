"""Control messages: small JSON objects with a string "type", carried in CONTROL frames."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from splitfedzip.wire.frame import Header, Kind, encode_frame


class ControlError(ValueError):
    """A control message is malformed."""


def _reject_constant(name: str) -> None:
    # NaN/Infinity are not JSON; accepting them would make messages non-portable.
    raise ControlError(f"control message contains non-JSON constant {name}")


def _check_type(message: Mapping[str, Any]) -> None:
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise ControlError('control message needs a non-empty string "type"')


def pack_control(message: Mapping[str, Any]) -> bytes:
    """Encode a control message as compact UTF-8 JSON."""
    if not isinstance(message, Mapping):
        raise ControlError(f"control message must be a mapping, got {type(message).__name__}")
    _check_type(message)
    try:
        text = json.dumps(dict(message), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ControlError(f"control message {message.get('type')!r} is not JSON: {exc}") from None
    return text.encode("utf-8")


def unpack_control(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a control message, checking it is a JSON object with a string "type"."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ControlError(f"control message is not UTF-8: {exc}") from None
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except ControlError:
        raise
    except (ValueError, RecursionError) as exc:  # not JSON, nested too deep, too many digits
        raise ControlError(f"control message is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ControlError(f"control message is a JSON {type(message).__name__}, not an object")
    _check_type(message)
    return message


def control_frame(message: Mapping[str, Any], **fields: Any) -> bytes:
    """Encode a control message as a CONTROL frame; fields are the other Header fields."""
    return encode_frame(Header(kind=Kind.CONTROL, **fields), pack_control(message))
