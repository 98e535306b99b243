"""Device twins: desired and reported sections per device, each with its own `$version` and
`$metadata` (last-updated times per property, as IoT Hub gives them).

This module owns the tables `hub_twins` and `hub_twin_reported_patches`. A reported patch carries the
gateway's `patch_id` and is applied at most once: a resend after a lost answer returns the version the
first one produced. Every applied patch is kept, so tests (and people) can count what arrived.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway.twin.documents import merge_patch
from hub_mock.db import Base, Database
from hub_mock.errors import Invalid, NotFound
from hub_mock.registry import Registry
from hub_mock.wire import utc_iso

# IoT Hub: each twin section is at most 32 KiB.
MAX_SECTION_BYTES = 32 * 1024


class TwinRow(Base):
    __tablename__ = "hub_twins"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    desired: Mapped[str] = mapped_column(Text, default="{}")
    desired_version: Mapped[int] = mapped_column(Integer, default=1)
    desired_metadata: Mapped[str] = mapped_column(Text, default="{}")
    reported: Mapped[str] = mapped_column(Text, default="{}")
    reported_version: Mapped[int] = mapped_column(Integer, default=1)
    reported_metadata: Mapped[str] = mapped_column(Text, default="{}")


class ReportedPatchRow(Base):
    __tablename__ = "hub_twin_reported_patches"

    patch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    gateway_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)  # the reported $version it produced
    patch: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True, slots=True)
class TwinSection:
    properties: dict[str, Any]
    version: int
    metadata: dict[str, Any]

    def device_json(self) -> dict[str, Any]:
        return {**self.properties, "$version": self.version}

    def full_json(self) -> dict[str, Any]:
        return {**self.properties, "$metadata": self.metadata, "$version": self.version}


@dataclass(frozen=True, slots=True)
class TwinView:
    device_id: str
    desired: TwinSection
    reported: TwinSection

    def device_json(self) -> dict[str, Any]:
        """What a device's twin GET answers (no $metadata, as IoT Hub's MQTT GET)."""
        return {"desired": self.desired.device_json(), "reported": self.reported.device_json()}

    def full_json(self) -> dict[str, Any]:
        """What `hub-mock twin show` prints: the service view, with $metadata."""
        return {"deviceId": self.device_id, "version": self.desired.version + self.reported.version - 1,
                "properties": {"desired": self.desired.full_json(), "reported": self.reported.full_json()}}


def check_patch(value: object, field: str) -> dict[str, Any]:
    """A merge patch from a request body: a JSON object with no `$` names, within IoT Hub's size limit."""
    if not isinstance(value, dict):
        raise Invalid(f"{field}: expected a JSON object (a merge patch; null deletes a key)", "bad_patch")
    if len(json.dumps(value)) > MAX_SECTION_BYTES:
        raise Invalid(f"{field}: a twin patch may be at most {MAX_SECTION_BYTES} bytes", "bad_patch")
    _check_names(value, field)
    return value


def _check_names(obj: dict[str, Any], field: str) -> None:
    for key, value in obj.items():
        if not key or key.startswith("$") or "." in key or " " in key:
            raise Invalid(f"{field}: property name {key!r} is not allowed (no '$' first, '.' or ' ')", "bad_patch")
        if isinstance(value, dict):
            _check_names(value, field)


def patch_metadata(metadata: dict[str, Any], patch: dict[str, Any], when: str,
                   version: int | None) -> dict[str, Any]:
    """`$metadata` after a patch: each touched property gets `$lastUpdated` (and, for desired,
    `$lastUpdatedVersion`), a deleted one loses its entry, and the section gets `$lastUpdated`."""
    stamp: dict[str, Any] = {"$lastUpdated": when}
    if version is not None:
        stamp["$lastUpdatedVersion"] = version
    merged = dict(metadata)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            base = merged.get(key)
            merged[key] = patch_metadata(base if isinstance(base, dict) else {}, value, when, version)
        else:
            merged[key] = dict(stamp)
    merged.update(stamp)
    return merged


class TwinStore:
    """Twins of registered devices; a device's twin exists (empty, version 1) from its first use."""

    def __init__(self, db: Database, registry: Registry) -> None:
        self._sessions = db.sessions
        self._registry = registry

    def get(self, device_id: str) -> TwinView:
        with self._sessions.begin() as session:
            return _view(self._row(session, device_id))

    def set_desired(self, device_id: str, patch: dict[str, Any], now: datetime) -> TwinView:
        """Apply a desired merge patch; the desired `$version` goes up by one."""
        with self._sessions.begin() as session:
            row = self._row(session, device_id)
            version = row.desired_version + 1
            row.desired = json.dumps(merge_patch(json.loads(row.desired), patch))
            row.desired_metadata = json.dumps(
                patch_metadata(json.loads(row.desired_metadata), patch, utc_iso(now), version))
            row.desired_version = version
            return _view(row)

    def apply_reported(self, gateway_id: str, device_id: str, patch_id: str, patch: dict[str, Any],
                       now: datetime) -> tuple[int, bool]:
        """Apply a reported patch once per `patch_id`: (the reported $version it produced, duplicate)."""
        with self._sessions.begin() as session:
            seen = session.get(ReportedPatchRow, patch_id)
            if seen is not None:
                return seen.version, True
            row = self._row(session, device_id)
            version = row.reported_version + 1
            row.reported = json.dumps(merge_patch(json.loads(row.reported), patch))
            row.reported_metadata = json.dumps(
                patch_metadata(json.loads(row.reported_metadata), patch, utc_iso(now), None))
            row.reported_version = version
            session.add(ReportedPatchRow(patch_id=patch_id, device_id=device_id, gateway_id=gateway_id,
                                         version=version, patch=json.dumps(patch), received_at=now))
            return version, False

    def reported_patches(self, device_id: str) -> list[dict[str, Any]]:
        """Every reported patch applied to the device's twin, oldest first."""
        query = select(ReportedPatchRow).where(ReportedPatchRow.device_id == device_id).order_by(
            ReportedPatchRow.version)
        with self._sessions() as session:
            return [{"patch_id": r.patch_id, "version": r.version, "gateway_id": r.gateway_id,
                     "patch": json.loads(r.patch), "received_at": utc_iso(r.received_at)}
                    for r in session.scalars(query)]

    def _row(self, session: Session, device_id: str) -> TwinRow:
        row = session.get(TwinRow, device_id)
        if row is not None:
            return row
        if self._registry.get_device(device_id) is None:
            raise NotFound(f"device {device_id} is not registered")
        row = TwinRow(device_id=device_id, desired="{}", desired_version=1, desired_metadata="{}",
                      reported="{}", reported_version=1, reported_metadata="{}")
        session.add(row)
        session.flush()
        return row


def _view(row: TwinRow) -> TwinView:
    return TwinView(
        row.device_id,
        TwinSection(json.loads(row.desired), row.desired_version, json.loads(row.desired_metadata)),
        TwinSection(json.loads(row.reported), row.reported_version, json.loads(row.reported_metadata)),
    )
