"""When a registry change must end a device's live session: a pure decision over two records."""

from __future__ import annotations

import enum

from gateway.records import DeviceRecord


class RevocationReason(enum.Enum):
    """Why a connected device is disconnected; the value is the machine-readable reason code."""

    DISABLED = "device_disabled"
    REMOVED = "device_removed"
    OUT_OF_SCOPE = "device_out_of_scope"
    THUMBPRINTS_CHANGED = "thumbprints_changed"
    AUTH_TYPE_CHANGED = "auth_type_changed"

    @property
    def sentence(self) -> str:
        return _SENTENCES[self]


_SENTENCES = {
    RevocationReason.DISABLED: "the device was disabled in the hub",
    RevocationReason.REMOVED: "the device was removed from the registry or from this gateway's device scope",
    RevocationReason.OUT_OF_SCOPE: "the device is now a child of another gateway",
    RevocationReason.THUMBPRINTS_CHANGED: "a thumbprint the device may have connected with is no longer registered",
    RevocationReason.AUTH_TYPE_CHANGED: "the device's authentication type changed",
}


def _thumbprints(record: DeviceRecord) -> set[str]:
    return {t for t in (record.primary_thumbprint, record.secondary_thumbprint) if t}


def revocation_reason(old: DeviceRecord | None, new: DeviceRecord | None, gateway_id: str) -> RevocationReason | None:
    """Why a session authenticated against `old` must end now that the registry says `new` (None: gone).

    None when no session can depend on `old` (absent or disabled) or `new` still admits it: a thumbprint
    rotation that keeps every old thumbprint (a new secondary added) leaves sessions alone.
    """
    if old is None or not old.enabled:
        return None
    if new is None:
        return RevocationReason.REMOVED
    if new.parent != gateway_id:
        return RevocationReason.OUT_OF_SCOPE
    if not new.enabled:
        return RevocationReason.DISABLED
    if new.auth_type is not old.auth_type:
        return RevocationReason.AUTH_TYPE_CHANGED
    if _thumbprints(old) - _thumbprints(new):
        return RevocationReason.THUMBPRINTS_CHANGED
    return None
