"""Plain records of the cache: registered CAs, a batch of changes to apply, the hub contact status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.records import DeviceRecord


@dataclass(frozen=True, slots=True)
class RegisteredCA:
    """A CA certificate registered in the hub; CA-authenticated devices may chain to it."""

    name: str
    pem: str
    thumbprint: str  # SHA-256, normalized


@dataclass(frozen=True, slots=True)
class CacheChanges:
    """What one sync step learned, applied in one transaction.

    With `full` the upserts are the whole device scope: cached devices missing from it are removed.
    `cas` None leaves the registered CAs as they are. `sequence` is the change-feed cursor to resume from
    (None: unchanged). `fetched_at` is when the hub said it.
    """

    fetched_at: datetime
    upserts: tuple[DeviceRecord, ...] = ()
    deletes: tuple[str, ...] = ()
    sequence: int | None = None
    full: bool = False
    cas: tuple[RegisteredCA, ...] | None = None


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """How the last contacts with the hub went; persisted so a restarted gateway (and `edgegate status`)
    knows how old its cache is."""

    online: bool = False
    online_since: datetime | None = None
    offline_since: datetime | None = None
    last_success_at: datetime | None = None  # the last time the hub answered a sync request
    last_attempt_at: datetime | None = None
    last_full_sync_at: datetime | None = None
    last_error: str | None = None  # the last failure, None when the last attempt succeeded


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """Everything the cache holds, as loaded at start-up."""

    devices: tuple[DeviceRecord, ...] = ()
    cas: tuple[RegisteredCA, ...] = ()
    sequence: int | None = None
    status: SyncStatus = field(default_factory=SyncStatus)


@dataclass(frozen=True, slots=True)
class CacheSummary:
    """Counts for `edgegate status`."""

    devices: int
    enabled: int
    oldest_fetched_at: datetime | None
    newest_fetched_at: datetime | None
    cas: int
    sequence: int | None
    status: SyncStatus
