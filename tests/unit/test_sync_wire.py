"""Parsing the hub's JSON: DeviceJSON, scope pages, change pages, CAs; malformed answers say which field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.cache.records import CacheChanges, RegisteredCA
from gateway.hub.registry_sync import changes_from_page
from gateway.hub.wire import ChangePage, FeedChange, parse_cas, parse_change_page, parse_device, parse_scope_page
from gateway.records import AuthType, DeviceRecord

DEVICE = {
    "device_id": "d1",
    "status": "enabled",
    "auth_type": "selfSigned",
    "primary_thumbprint": "AA" * 32,
    "secondary_thumbprint": None,
    "parent": "gw1",
    "generation": 7,
}
RECORD = DeviceRecord("d1", True, AuthType.SELF_SIGNED, "gw1", "aa" * 32, None, 7)


def test_device_json() -> None:
    assert parse_device(DEVICE) == RECORD
    ca = parse_device(DEVICE | {"auth_type": "certificateAuthority", "status": "disabled", "primary_thumbprint": None})
    assert (ca.auth_type, ca.enabled, ca.primary_thumbprint) == (AuthType.CERTIFICATE_AUTHORITY, False, None)
    assert parse_device(DEVICE | {"parent": None}).parent is None


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"status": "on"}, "status"),
        ({"auth_type": "sas"}, "auth_type"),
        ({"generation": "7"}, "generation"),
        ({"generation": True}, "generation"),
        ({"device_id": None}, "device_id"),
        ({"primary_thumbprint": 5}, "primary_thumbprint"),
    ],
)
def test_malformed_device_names_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_device(DEVICE | patch)


def test_pages_and_cas() -> None:
    page = parse_scope_page({"devices": [DEVICE], "next": "d1", "sequence": 9})
    assert (page.devices, page.next, page.sequence) == ((RECORD,), "d1", 9)
    assert parse_scope_page({"devices": [], "next": None, "sequence": 0}).next is None
    changes = parse_change_page(
        {
            "changes": [
                {"seq": 8, "device_id": "d1", "op": "upsert", "device": DEVICE},
                {"seq": 9, "device_id": "d2", "op": "delete", "device": None},
            ],
            "sequence": 9,
            "more": False,
        }
    )
    assert changes == ChangePage((FeedChange(8, "d1", RECORD), FeedChange(9, "d2", None)), 9, False)
    assert parse_cas({"cas": [{"name": "n", "pem": "P", "thumbprint": "t"}]}) == (RegisteredCA("n", "P", "t"),)
    with pytest.raises(ValueError, match="op"):
        parse_change_page({"changes": [{"seq": 1, "device_id": "x", "op": "move"}], "sequence": 1, "more": False})
    with pytest.raises(ValueError, match="JSON object"):
        parse_scope_page([])


def test_change_page_becomes_cache_changes() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    page = ChangePage((FeedChange(8, "d1", RECORD), FeedChange(9, "d2", None)), 9, False)
    assert changes_from_page(page, now) == CacheChanges(
        fetched_at=now, upserts=(RECORD,), deletes=("d2",), sequence=9
    )


def test_a_ca_change_brings_the_whole_ca_list() -> None:
    body = {"changes": [], "sequence": 12, "more": False, "cas": [{"name": "n", "pem": "P", "thumbprint": "t"}]}
    page = parse_change_page(body)
    assert page.cas == (RegisteredCA("n", "P", "t"),)
    assert parse_change_page(body | {"cas": []}).cas == ()  # the last CA removed: an empty list, not "unchanged"
    assert parse_change_page({"changes": [], "sequence": 12, "more": False}).cas is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert changes_from_page(page, now).cas == (RegisteredCA("n", "P", "t"),)
    assert changes_from_page(parse_change_page(body | {"cas": []}), now).cas == ()
    with pytest.raises(ValueError, match="cas"):
        parse_change_page(body | {"cas": "all of them"})
