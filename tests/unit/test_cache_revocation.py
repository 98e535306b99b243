"""Pure merge decisions: which registry changes end live sessions, snapshot diffs, stale fetches."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.cache.merge import accept_fetched, diff_snapshot
from gateway.cache.revocation import RevocationReason, revocation_reason
from gateway.records import AuthType, DeviceRecord

GW = "gw1"
A, B, C = "aa" * 32, "bb" * 32, "cc" * 32
DEV = DeviceRecord("d1", True, AuthType.SELF_SIGNED, GW, A, B, 10)
CA_DEV = DeviceRecord("d2", True, AuthType.CERTIFICATE_AUTHORITY, GW, None, None, 11)
R = RevocationReason


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (None, DEV, None),  # a new device: nothing to revoke
        (None, None, None),
        (DEV, DEV, None),
        (DEV, replace(DEV, generation=99), None),  # a touch that changes nothing that matters
        (DEV, None, R.REMOVED),
        (DEV, replace(DEV, enabled=False), R.DISABLED),
        (DEV, replace(DEV, parent="gw2"), R.OUT_OF_SCOPE),
        (DEV, replace(DEV, parent=None), R.OUT_OF_SCOPE),
        (DEV, replace(DEV, parent="gw2", enabled=False), R.OUT_OF_SCOPE),
        (DEV, replace(DEV, primary_thumbprint=C), R.THUMBPRINTS_CHANGED),  # A dropped
        (DEV, replace(DEV, secondary_thumbprint=None), R.THUMBPRINTS_CHANGED),  # B dropped
        (DEV, replace(DEV, primary_thumbprint=B, secondary_thumbprint=A), None),  # swapped: both still valid
        (replace(DEV, secondary_thumbprint=None), DEV, None),  # a secondary added for a rotation
        (DEV, replace(DEV, auth_type=AuthType.CERTIFICATE_AUTHORITY), R.AUTH_TYPE_CHANGED),
        (CA_DEV, replace(CA_DEV, auth_type=AuthType.SELF_SIGNED, primary_thumbprint=A), R.AUTH_TYPE_CHANGED),
        (CA_DEV, replace(CA_DEV, enabled=False), R.DISABLED),
        (CA_DEV, None, R.REMOVED),
        # A disabled device has no session to end, whatever happens next.
        (replace(DEV, enabled=False), None, None),
        (replace(DEV, enabled=False), replace(DEV, enabled=False, primary_thumbprint=C), None),
        (replace(DEV, enabled=False), DEV, None),
    ],
)
def test_revocation_table(old: DeviceRecord | None, new: DeviceRecord | None, reason: RevocationReason | None) -> None:
    assert revocation_reason(old, new, GW) is reason


def test_every_reason_has_a_code_and_a_sentence() -> None:
    codes = [reason.value for reason in RevocationReason]
    assert len(set(codes)) == len(codes)
    assert all(reason.sentence and reason.value.islower() for reason in RevocationReason)


def test_diff_snapshot() -> None:
    d3 = replace(DEV, device_id="d3")
    current = {"d1": DEV, "d2": CA_DEV, "d3": d3}
    changed = replace(DEV, enabled=False, generation=12)
    new = replace(DEV, device_id="d4")
    upserts, deletes = diff_snapshot(current, [changed, d3, new])
    assert upserts == [changed, new]
    assert deletes == ["d2"]
    assert diff_snapshot(current, current.values()) == ([], [])
    assert diff_snapshot(current, []) == ([], ["d1", "d2", "d3"])
    assert diff_snapshot({}, [DEV]) == ([DEV], [])


@pytest.mark.parametrize(
    ("generation", "current_generation", "cursor", "accepted"),
    [
        (10, None, None, True),  # before the first full sync: anything the hub says
        (10, None, 9, True),  # added after the cursor: the feed has not brought it yet
        (10, None, 10, False),  # at or before the cursor and not cached: removed since, stale
        (10, None, 50, False),
        (10, 9, 50, True),  # newer than the cached record
        (10, 10, 50, False),
        (10, 11, 5, False),  # the feed already has a newer one
    ],
)
def test_accept_fetched(generation: int, current_generation: int | None, cursor: int | None, accepted: bool) -> None:
    current = None if current_generation is None else replace(DEV, generation=current_generation)
    assert accept_fetched(replace(DEV, generation=generation), current, cursor) is accepted
