"""Twin documents and merge patches (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.twin.documents import EMPTY_TWIN, Twin, merge_patch, parse_patch, parse_twin


@pytest.mark.parametrize(
    ("target", "patch", "merged"),
    [
        ({}, {"a": 1}, {"a": 1}),
        ({"a": 1}, {"a": None}, {}),
        ({"a": 1}, {"b": None}, {"a": 1}),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}, {"a": {"c": 2, "d": 3}}),
        ({"a": 1}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
    ],
)
def test_merge_patch(target: dict[str, Any], patch: dict[str, Any], merged: dict[str, Any]) -> None:
    before = json.dumps(target)
    assert merge_patch(target, patch) == merged
    assert json.dumps(target) == before  # the target is not changed


def test_reported_patch_bumps_the_version_and_desired_ignores_old_ones() -> None:
    twin = EMPTY_TWIN.with_reported({"fw": "1"})
    assert twin.to_device_json() == {"desired": {"$version": 1}, "reported": {"fw": "1", "$version": 2}}
    assert twin.with_reported({"fw": None}, version=9).reported_version == 9
    newer = twin.with_desired({"interval": 5}, 3)
    assert newer.desired == {"interval": 5}
    assert newer.desired_version == 3
    assert newer.with_desired({"interval": 1}, 2) is newer


def test_parse_twin_round_trips() -> None:
    twin = Twin({"a": 1}, {"b": {"c": 2}}, 4, 7)
    assert parse_twin(twin.to_device_json()) == twin
    with pytest.raises(ValueError, match="desired"):
        parse_twin({"desired": []})


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        (b'{"fw": "1.2.3"}', True),
        (b'{"nested": {"x": null}}', True),
        (b"not json", False),
        (b"[1, 2]", False),
        (b'{"$version": 3}', False),
        (b'{"a.b": 1}', False),
        (b'{"a b": 1}', False),
        (json.dumps({"x": "y" * 40000}).encode(), False),
        (("{" + '"a":{' * 11 + "}" * 12).encode(), False),
    ],
)
def test_parse_patch(body: bytes, ok: bool) -> None:
    patch, why = parse_patch(body)
    assert (patch is not None) is ok
    assert (why == "ok") is ok
