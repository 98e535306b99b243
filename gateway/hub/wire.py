"""The hub API's JSON, parsed into records (pure; a malformed answer raises ValueError naming the field)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.cache.records import RegisteredCA
from gateway.records import AuthType, DeviceRecord

_STATUS = {"enabled": True, "disabled": False}


@dataclass(frozen=True, slots=True)
class ScopePage:
    """One page of the gateway's device scope; `next` is the `after` of the next page (None: last)."""

    devices: tuple[DeviceRecord, ...]
    next: str | None
    sequence: int


@dataclass(frozen=True, slots=True)
class FeedChange:
    """A device whose record changed; `device` None: it was removed or left this gateway's scope."""

    seq: int
    device_id: str
    device: DeviceRecord | None


@dataclass(frozen=True, slots=True)
class ChangePage:
    """Changes after a cursor. `reset`: the hub's sequence is behind our cursor (registry reset) and
    only a full sync can recover."""

    changes: tuple[FeedChange, ...]
    sequence: int
    more: bool
    reset: bool = False
    cas: tuple[RegisteredCA, ...] | None = None  # all registered CAs, when one changed in this page


def _field(obj: Any, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ValueError(f"field {key!r} is {value!r}")
    return value


def _thumbprint(obj: Any, key: str) -> str | None:
    value = _field(obj, key, str, optional=True)
    return value.lower() if value else None


def parse_device(obj: Any) -> DeviceRecord:
    """DeviceJSON -> DeviceRecord."""
    status = _field(obj, "status", str)
    if status not in _STATUS:
        raise ValueError(f"field 'status' is {status!r}")
    try:
        auth_type = AuthType(_field(obj, "auth_type", str))
    except ValueError as exc:
        raise ValueError(f"field 'auth_type': {exc}") from None
    return DeviceRecord(
        device_id=_field(obj, "device_id", str),
        enabled=_STATUS[status],
        auth_type=auth_type,
        parent=_field(obj, "parent", str, optional=True),
        primary_thumbprint=_thumbprint(obj, "primary_thumbprint"),
        secondary_thumbprint=_thumbprint(obj, "secondary_thumbprint"),
        generation=_field(obj, "generation", int),
    )


def parse_scope_page(obj: Any) -> ScopePage:
    devices = _field(obj, "devices", list)
    return ScopePage(
        devices=tuple(parse_device(item) for item in devices),
        next=_field(obj, "next", str, optional=True),
        sequence=_field(obj, "sequence", int),
    )


def parse_change_page(obj: Any) -> ChangePage:
    changes = []
    for item in _field(obj, "changes", list):
        op = _field(item, "op", str)
        if op not in ("upsert", "delete"):
            raise ValueError(f"field 'op' is {op!r}")
        device = parse_device(_field(item, "device", dict)) if op == "upsert" else None
        changes.append(FeedChange(_field(item, "seq", int), _field(item, "device_id", str), device))
    cas = parse_cas(obj) if _field(obj, "cas", list, optional=True) is not None else None
    return ChangePage(tuple(changes), _field(obj, "sequence", int), bool(_field(obj, "more", bool)), cas=cas)


def parse_cas(obj: Any) -> tuple[RegisteredCA, ...]:
    return tuple(
        RegisteredCA(_field(item, "name", str), _field(item, "pem", str), _field(item, "thumbprint", str))
        for item in _field(obj, "cas", list)
    )
