"""The device registry, the source of truth: devices, registered CAs, gateways and the change log.

This module owns the tables `hub_devices`, `hub_cas`, `hub_gateways` and `hub_changes`. Every write
appends one row to the change log in the same transaction; a device's `generation` is the seq of its
last change. Calls are blocking: run them on the database thread (`Database.run`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Index, Integer, Select, String, Text, func, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway.auth.identity import DEVICE_ID_SPECIALS, MAX_DEVICE_ID, is_iot_hub_device_id
from gateway.pki import normalize_thumbprint, thumbprint_sha256
from gateway.records import AuthType, DeviceRecord
from hub_mock.db import Base, Database
from hub_mock.errors import AlreadyExists, Invalid, NotFound


class DeviceRow(Base):
    __tablename__ = "hub_devices"
    __table_args__ = (Index("ix_hub_devices_parent", "parent", "device_id"),)

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # enabled | disabled
    auth_type: Mapped[str] = mapped_column(String(32))  # selfSigned | certificateAuthority
    primary_thumbprint: Mapped[str | None] = mapped_column(String(64))
    secondary_thumbprint: Mapped[str | None] = mapped_column(String(64))
    parent: Mapped[str | None] = mapped_column(String(128))
    generation: Mapped[int] = mapped_column(Integer)


class CARow(Base):
    __tablename__ = "hub_cas"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    pem: Mapped[str] = mapped_column(Text)
    thumbprint: Mapped[str] = mapped_column(String(64), unique=True)


class GatewayRow(Base):
    __tablename__ = "hub_gateways"

    gateway_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    primary_thumbprint: Mapped[str] = mapped_column(String(64))
    secondary_thumbprint: Mapped[str | None] = mapped_column(String(64))
    identity_pem: Mapped[str | None] = mapped_column(Text)  # a self-signed identity cert to trust in TLS


class ChangeRow(Base):
    """One registry write. `old_parent`/`new_parent` say whose device scope a device change touches,
    so a gateway's delta reads only its own rows (indexes on (parent, seq)), never the whole registry."""

    __tablename__ = "hub_changes"
    __table_args__ = (
        Index("ix_hub_changes_old_parent", "old_parent", "seq"),
        Index("ix_hub_changes_new_parent", "new_parent", "seq"),
        Index("ix_hub_changes_kind", "kind", "seq"),  # CA changes concern every gateway's feed
        {"sqlite_autoincrement": True},  # a seq is never reused
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # device | ca | gateway
    subject: Mapped[str] = mapped_column(String(128))  # device id, CA name or gateway id
    op: Mapped[str] = mapped_column(String(16))  # upsert | delete
    old_parent: Mapped[str | None] = mapped_column(String(128))
    new_parent: Mapped[str | None] = mapped_column(String(128))


class Keep(enum.Enum):
    """Marks a field a device update leaves as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """The fields of a device to change; KEEP leaves one alone, None clears a thumbprint or the parent."""

    enabled: bool | Keep = KEEP
    auth_type: AuthType | Keep = KEEP
    primary_thumbprint: str | Keep | None = KEEP
    secondary_thumbprint: str | Keep | None = KEEP
    parent: str | Keep | None = KEEP


@dataclass(frozen=True, slots=True)
class RegisteredCA:
    name: str
    pem: str
    thumbprint: str  # SHA-256, normalized


@dataclass(frozen=True, slots=True)
class GatewayRegistration:
    gateway_id: str
    primary_thumbprint: str
    secondary_thumbprint: str | None
    identity_pem: str | None


@dataclass(frozen=True, slots=True)
class ScopePage:
    devices: tuple[DeviceRecord, ...]
    next: str | None  # pass as `after` for the next page; None on the last page
    sequence: int  # the change seq when the page was read


@dataclass(frozen=True, slots=True)
class ScopeChange:
    """A device whose membership or record changed for one gateway; `device` None means "drop it"."""

    seq: int
    device_id: str
    device: DeviceRecord | None


@dataclass(frozen=True, slots=True)
class ChangePage:
    """Device changes of one gateway's scope; `cas` is the whole list of registered CAs when any CA was
    added, replaced or removed in the page's range (None: the CAs did not change)."""

    changes: tuple[ScopeChange, ...]
    sequence: int  # pass as `since` next time; the hub's latest seq unless `more`
    more: bool
    cas: tuple[RegisteredCA, ...] | None = None


def check_id(kind: str, value: object) -> str:
    """`value` if it is a valid IoT Hub id, else Invalid naming `kind`."""
    if not isinstance(value, str) or not is_iot_hub_device_id(value):
        specials = "".join(sorted(DEVICE_ID_SPECIALS))
        raise Invalid(f"{kind} {value!r} is not a valid id: 1-{MAX_DEVICE_ID} ASCII letters, digits or {specials}")
    return value


def check_thumbprint(value: object) -> str:
    """A thumbprint in any common form (colons, upper case; SHA-1 or SHA-256), normalized."""
    if not isinstance(value, str):
        raise Invalid(f"thumbprint {value!r} is not a string")
    try:
        return normalize_thumbprint(value)
    except ValueError as exc:
        raise Invalid(f"thumbprint {value!r}: {exc}") from exc


def parse_single_cert(pem: object, what: str) -> x509.Certificate:
    """The one certificate in `pem`, or Invalid."""
    if not isinstance(pem, str):
        raise Invalid(f"{what}: expected PEM text")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise Invalid(f"{what}: not a PEM certificate ({exc})") from exc
    if len(certs) != 1:
        raise Invalid(f"{what}: expected exactly one certificate, found {len(certs)}")
    return certs[0]


def _record(row: DeviceRow) -> DeviceRecord:
    return DeviceRecord(
        device_id=row.device_id,
        enabled=row.status == "enabled",
        auth_type=AuthType(row.auth_type),
        parent=row.parent,
        primary_thumbprint=row.primary_thumbprint,
        secondary_thumbprint=row.secondary_thumbprint,
        generation=row.generation,
    )


def _check_credentials(
    device_id: str, auth_type: AuthType, primary: str | None, secondary: str | None
) -> None:
    if auth_type is AuthType.SELF_SIGNED and primary is None:
        raise Invalid(f"device {device_id}: a selfSigned device needs a primary thumbprint")
    if auth_type is AuthType.CERTIFICATE_AUTHORITY and (primary or secondary):
        raise Invalid(f"device {device_id}: a certificateAuthority device has no thumbprints; clear them")
    if primary is not None and primary == secondary:
        raise Invalid(f"device {device_id}: primary and secondary thumbprints are the same")


class Registry:
    """Devices, CAs and gateways, with a change log a gateway can follow from any seq."""

    def __init__(self, db: Database) -> None:
        self._sessions = db.sessions

    # -- devices ---------------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        *,
        auth_type: AuthType,
        parent: str | None,
        primary_thumbprint: str | None = None,
        secondary_thumbprint: str | None = None,
        enabled: bool = True,
    ) -> DeviceRecord:
        """Register a device; AlreadyExists if the id is taken, Invalid for bad fields or parent."""
        check_id("device id", device_id)
        primary = check_thumbprint(primary_thumbprint) if primary_thumbprint is not None else None
        secondary = check_thumbprint(secondary_thumbprint) if secondary_thumbprint is not None else None
        _check_credentials(device_id, auth_type, primary, secondary)
        with self._sessions.begin() as session:
            if session.get(DeviceRow, device_id) is not None:
                raise AlreadyExists(f"device {device_id} is already registered; use update")
            self._check_parent(session, parent)
            seq = self._log(session, "device", device_id, "upsert", None, parent)
            row = DeviceRow(
                device_id=device_id,
                status="enabled" if enabled else "disabled",
                auth_type=auth_type.value,
                primary_thumbprint=primary,
                secondary_thumbprint=secondary,
                parent=parent,
                generation=seq,
            )
            session.add(row)
            return _record(row)

    def update_device(self, device_id: str, update: DeviceUpdate) -> DeviceRecord:
        """Change some fields of a device (enable/disable, rotate thumbprints, move scope)."""
        with self._sessions.begin() as session:
            row = session.get(DeviceRow, device_id)
            if row is None:
                raise NotFound(f"device {device_id} is not registered")
            old_parent = row.parent
            auth_type = AuthType(row.auth_type) if update.auth_type is KEEP else update.auth_type
            primary = row.primary_thumbprint
            if update.primary_thumbprint is not KEEP:
                primary = (
                    None if update.primary_thumbprint is None else check_thumbprint(update.primary_thumbprint)
                )
            secondary = row.secondary_thumbprint
            if update.secondary_thumbprint is not KEEP:
                secondary = (
                    None
                    if update.secondary_thumbprint is None
                    else check_thumbprint(update.secondary_thumbprint)
                )
            _check_credentials(device_id, auth_type, primary, secondary)
            parent = old_parent if update.parent is KEEP else update.parent
            if parent != old_parent:
                self._check_parent(session, parent)
            row.auth_type, row.primary_thumbprint, row.secondary_thumbprint = (
                auth_type.value,
                primary,
                secondary,
            )
            row.parent = parent
            if update.enabled is not KEEP:
                row.status = "enabled" if update.enabled else "disabled"
            row.generation = self._log(session, "device", device_id, "upsert", old_parent, parent)
            return _record(row)

    def remove_device(self, device_id: str) -> None:
        """Delete a device; NotFound if there is none."""
        with self._sessions.begin() as session:
            row = session.get(DeviceRow, device_id)
            if row is None:
                raise NotFound(f"device {device_id} is not registered")
            self._log(session, "device", device_id, "delete", row.parent, None)
            session.delete(row)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self._sessions() as session:
            row = session.get(DeviceRow, device_id)
            return None if row is None else _record(row)

    def list_devices(self, parent: str | None = None) -> list[DeviceRecord]:
        """Every device (or one gateway's scope), ordered by id; for the admin view, not the gateway API."""
        query = select(DeviceRow).order_by(DeviceRow.device_id)
        if parent is not None:
            query = query.where(DeviceRow.parent == parent)
        with self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def scope_ids(self, gateway_id: str) -> Select[str]:
        """A subquery of the device ids in `gateway_id`'s scope, for tables that follow the scope."""
        return select(DeviceRow.device_id).where(DeviceRow.parent == gateway_id)

    def scope_page(self, gateway_id: str, *, after: str | None, limit: int) -> ScopePage:
        """One page of the gateway's device scope, ordered by device id, after the id `after`."""
        query = select(DeviceRow).where(DeviceRow.parent == gateway_id)
        if after is not None:
            query = query.where(DeviceRow.device_id > after)
        query = query.order_by(DeviceRow.device_id).limit(limit + 1)
        with self._sessions() as session:
            sequence = self._latest(session)
            rows = list(session.scalars(query))
        page = tuple(_record(row) for row in rows[:limit])
        return ScopePage(page, page[-1].device_id if len(rows) > limit else None, sequence)

    def changes_since(self, gateway_id: str, *, since: int, limit: int) -> ChangePage:
        """Changes after `since` that touch the gateway's scope, as the devices' current state.

        A device that left the scope (moved, deleted) comes back with `device` None. Several changes
        of one device inside a page collapse into its last one. Reads only this gateway's rows of the
        change log, so the cost follows the number of changes, not the size of the registry.
        Registered CAs concern every gateway: a CA change in the page's range brings the whole CA list.
        """
        query = (
            select(ChangeRow.seq, ChangeRow.subject)
            .where(
                ChangeRow.seq > since,
                or_(ChangeRow.old_parent == gateway_id, ChangeRow.new_parent == gateway_id),
            )
            .order_by(ChangeRow.seq)
            .limit(limit + 1)
        )
        with self._sessions() as session:
            latest = self._latest(session)
            rows = list(session.execute(query).tuples())
            more = len(rows) > limit
            rows = rows[:limit]
            last_seq = {device_id: seq for seq, device_id in rows}
            current = {
                row.device_id: row
                for row in session.scalars(select(DeviceRow).where(DeviceRow.device_id.in_(list(last_seq))))
            }
            end = rows[-1][0] if more else latest
            ca_changed = session.scalar(
                select(ChangeRow.seq).where(ChangeRow.kind == "ca", ChangeRow.seq > since, ChangeRow.seq <= end)
                .limit(1)
            )
            cas = self._cas(session) if ca_changed is not None else None
        changes = []
        for device_id, seq in sorted(last_seq.items(), key=lambda item: item[1]):
            row = current.get(device_id)
            in_scope = row is not None and row.parent == gateway_id
            changes.append(
                ScopeChange(seq, device_id, _record(row) if row is not None and in_scope else None)
            )
        return ChangePage(tuple(changes), end, more, cas)

    def latest_sequence(self) -> int:
        with self._sessions() as session:
            return self._latest(session)

    # -- CAs ---------------------------------------------------------------------------------------

    def add_ca(self, name: str, pem: str) -> RegisteredCA:
        """Register a CA certificate devices (and gateway identity certs) may chain to."""
        check_id("CA name", name)
        cert = parse_single_cert(pem, f"CA {name}")
        ca = RegisteredCA(name, cert.public_bytes(Encoding.PEM).decode(), thumbprint_sha256(cert))
        with self._sessions.begin() as session:
            if session.get(CARow, name) is not None:
                raise AlreadyExists(f"a CA named {name} is already registered")
            if session.scalar(select(CARow.name).where(CARow.thumbprint == ca.thumbprint)) is not None:
                raise AlreadyExists(
                    f"this certificate is already registered as a CA (thumbprint {ca.thumbprint})"
                )
            session.add(CARow(name=ca.name, pem=ca.pem, thumbprint=ca.thumbprint))
            self._log(session, "ca", name, "upsert", None, None)
        return ca

    def replace_ca(self, name: str, pem: str) -> RegisteredCA:
        """Put a new certificate under a registered CA's name (a CA renewed or re-keyed)."""
        cert = parse_single_cert(pem, f"CA {name}")
        ca = RegisteredCA(name, cert.public_bytes(Encoding.PEM).decode(), thumbprint_sha256(cert))
        with self._sessions.begin() as session:
            row = session.get(CARow, name)
            if row is None:
                raise NotFound(f"no CA named {name} is registered")
            other = session.scalar(select(CARow.name).where(CARow.thumbprint == ca.thumbprint, CARow.name != name))
            if other is not None:
                raise AlreadyExists(f"this certificate is already registered as CA {other}")
            row.pem, row.thumbprint = ca.pem, ca.thumbprint
            self._log(session, "ca", name, "upsert", None, None)
        return ca

    def remove_ca(self, name: str) -> RegisteredCA:
        """Unregister a CA: devices chained only to it are no longer admitted, live sessions included."""
        with self._sessions.begin() as session:
            row = session.get(CARow, name)
            if row is None:
                raise NotFound(f"no CA named {name} is registered")
            ca = RegisteredCA(row.name, row.pem, row.thumbprint)
            session.delete(row)
            self._log(session, "ca", name, "delete", None, None)
        return ca

    def list_cas(self) -> list[RegisteredCA]:
        with self._sessions() as session:
            return list(self._cas(session))

    @staticmethod
    def _cas(session: Session) -> tuple[RegisteredCA, ...]:
        rows = session.scalars(select(CARow).order_by(CARow.name))
        return tuple(RegisteredCA(row.name, row.pem, row.thumbprint) for row in rows)

    # -- gateways ----------------------------------------------------------------------------------

    def put_gateway(
        self,
        gateway_id: str,
        *,
        primary_thumbprint: str | None = None,
        secondary_thumbprint: str | None = None,
        identity_pem: str | None = None,
        replace: bool = False,
    ) -> GatewayRegistration:
        """Register (or with `replace`, re-register) a gateway by thumbprint or by its identity cert.

        With `identity_pem` the primary thumbprint defaults to the cert's SHA-256 and the cert joins
        the TLS trust store, which a self-signed identity cert needs to get through the handshake.
        """
        check_id("gateway id", gateway_id)
        pem = None
        primary = check_thumbprint(primary_thumbprint) if primary_thumbprint is not None else None
        if identity_pem is not None:
            cert = parse_single_cert(identity_pem, f"identity certificate of gateway {gateway_id}")
            pem = cert.public_bytes(Encoding.PEM).decode()
            if primary is None:
                primary = thumbprint_sha256(cert)
        if primary is None:
            raise Invalid(f"gateway {gateway_id}: give a primary thumbprint or the identity certificate")
        secondary = check_thumbprint(secondary_thumbprint) if secondary_thumbprint is not None else None
        registration = GatewayRegistration(gateway_id, primary, secondary, pem)
        with self._sessions.begin() as session:
            row = session.get(GatewayRow, gateway_id)
            if row is not None and not replace:
                raise AlreadyExists(f"gateway {gateway_id} is already registered; use update")
            if row is None and replace:
                raise NotFound(f"gateway {gateway_id} is not registered")
            if row is None:
                row = GatewayRow(gateway_id=gateway_id)
                session.add(row)
            row.primary_thumbprint, row.secondary_thumbprint, row.identity_pem = primary, secondary, pem
            self._log(session, "gateway", gateway_id, "upsert", None, None)
        return registration

    def get_gateway(self, gateway_id: str) -> GatewayRegistration | None:
        with self._sessions() as session:
            row = session.get(GatewayRow, gateway_id)
            if row is None:
                return None
            return GatewayRegistration(
                row.gateway_id, row.primary_thumbprint, row.secondary_thumbprint, row.identity_pem
            )

    def list_gateways(self) -> list[GatewayRegistration]:
        with self._sessions() as session:
            rows = session.scalars(select(GatewayRow).order_by(GatewayRow.gateway_id))
            return [
                GatewayRegistration(
                    row.gateway_id, row.primary_thumbprint, row.secondary_thumbprint, row.identity_pem
                )
                for row in rows
            ]

    def trusted_pems(self) -> list[str]:
        """Every certificate the TLS layer should accept a gateway chain to: CAs and identity certs."""
        with self._sessions() as session:
            cas = list(session.scalars(select(CARow.pem)))
            identities = list(
                session.scalars(select(GatewayRow.identity_pem).where(GatewayRow.identity_pem.is_not(None)))
            )
        return cas + [pem for pem in identities if pem is not None]

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _check_parent(session: Session, parent: str | None) -> None:
        if parent is not None and session.get(GatewayRow, parent) is None:
            raise Invalid(f"parent gateway {parent} is not registered; add it first", "unknown_gateway")

    @staticmethod
    def _log(session: Session, kind: str, subject: str, op: str, old: str | None, new: str | None) -> int:
        change = ChangeRow(kind=kind, subject=subject, op=op, old_parent=old, new_parent=new)
        session.add(change)
        session.flush()
        return change.seq

    @staticmethod
    def _latest(session: Session) -> int:
        value: Any = session.scalar(select(func.max(ChangeRow.seq)))
        return int(value or 0)
