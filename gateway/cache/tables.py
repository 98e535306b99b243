"""The cache's tables. `gateway.cache.repository` is the one module that reads and writes them."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, Integer, String, Table, Text

from gateway.db.base import metadata
from gateway.db.types import UTCDateTime

# IoT Hub's limits: device ids and CA names up to 128 characters; thumbprints are SHA-256 hex at most.
ID_LENGTH = 128
THUMBPRINT_LENGTH = 64

cache_devices = Table(
    "cache_devices",
    metadata,
    Column("device_id", String(ID_LENGTH), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("auth_type", String(32), nullable=False),
    Column("parent", String(ID_LENGTH)),
    Column("primary_thumbprint", String(THUMBPRINT_LENGTH)),
    Column("secondary_thumbprint", String(THUMBPRINT_LENGTH)),
    Column("generation", BigInteger, nullable=False),
    # When the hub last vouched for this record (its last change, or the last full sync that listed it).
    Column("fetched_at", UTCDateTime, nullable=False),
)

cache_cas = Table(
    "cache_cas",
    metadata,
    Column("name", String(ID_LENGTH), primary_key=True),
    Column("pem", Text, nullable=False),
    Column("thumbprint", String(THUMBPRINT_LENGTH), nullable=False),
)

SYNC_STATE_ID = 1

cache_sync_state = Table(
    "cache_sync_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sequence", BigInteger),  # change-feed cursor; None before the first full sync
    Column("online", Boolean, nullable=False),
    Column("online_since", UTCDateTime),
    Column("offline_since", UTCDateTime),
    Column("last_success_at", UTCDateTime),
    Column("last_attempt_at", UTCDateTime),
    Column("last_full_sync_at", UTCDateTime),
    Column("last_error", Text),
    CheckConstraint(f"id = {SYNC_STATE_ID}", name="single_row"),
)
