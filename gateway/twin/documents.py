"""Twin documents and patches, as plain data (pure: no I/O, no clock).

A twin as a device sees it is `{"desired": {..., "$version": n}, "reported": {..., "$version": m}}`.
A patch is a JSON merge patch (RFC 7396): objects merge, `null` deletes a key, anything else replaces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# IoT Hub: each of desired/reported is at most 32 KiB, nested at most 10 levels (twin limits).
MAX_SECTION_BYTES = 32 * 1024
MAX_DEPTH = 10


@dataclass(frozen=True, slots=True)
class Twin:
    """Both sections of a twin without their `$version`, and each section's version."""

    desired: dict[str, Any]
    reported: dict[str, Any]
    desired_version: int = 1
    reported_version: int = 1

    def to_device_json(self) -> dict[str, Any]:
        """The body of a `$iothub/twin/res/200` answer."""
        return {
            "desired": {**self.desired, "$version": self.desired_version},
            "reported": {**self.reported, "$version": self.reported_version},
        }

    def with_reported(self, patch: dict[str, Any], version: int | None = None) -> Twin:
        """The twin after a reported patch; `version` is the hub's, else the next one."""
        return Twin(self.desired, merge_patch(self.reported, patch), self.desired_version,
                    version if version is not None else self.reported_version + 1)

    def with_desired(self, patch: dict[str, Any], version: int) -> Twin:
        """The twin after a desired patch the hub numbered `version` (an older one changes nothing)."""
        if version <= self.desired_version:
            return self
        return Twin(merge_patch(self.desired, patch), self.reported, version, self.reported_version)


EMPTY_TWIN = Twin({}, {})


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`target` with the merge patch applied (neither argument is changed)."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            base = merged.get(key)
            merged[key] = merge_patch(base if isinstance(base, dict) else {}, value)
        else:
            merged[key] = value
    return merged


def parse_twin(obj: Any) -> Twin:
    """A device-style twin document -> Twin; ValueError names what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("a twin is a JSON object")
    sections = []
    for name in ("desired", "reported"):
        section = obj.get(name, {})
        if not isinstance(section, dict):
            raise ValueError(f"twin section {name!r} is not an object")
        version = section.get("$version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"twin section {name!r} has a non-integer $version")
        sections.append(({k: v for k, v in section.items() if not k.startswith("$")}, version))
    (desired, dv), (reported, rv) = sections
    return Twin(desired, reported, dv, rv)


def parse_patch(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """A reported-properties patch from a device: (patch, "ok") or (None, reason sentence)."""
    if len(body) > MAX_SECTION_BYTES:
        return None, f"a patch may be at most {MAX_SECTION_BYTES} bytes, this one is {len(body)}"
    try:
        patch = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, "the patch is not JSON; send a JSON object of the properties to change"
    if not isinstance(patch, dict):
        return None, "the patch must be a JSON object"
    problem = _check_keys(patch, 1)
    if problem:
        return None, problem
    return patch, "ok"


def _check_keys(obj: dict[str, Any], depth: int) -> str:
    if depth > MAX_DEPTH:
        return f"the patch is nested deeper than {MAX_DEPTH} levels"
    for key, value in obj.items():
        if not key or key.startswith("$") or any(c in key for c in ".  ") or not key.isprintable():
            return f"property name {key!r} is not allowed (no '$' first, no '.', ' ' or control characters)"
        if isinstance(value, dict):
            problem = _check_keys(value, depth + 1)
            if problem:
                return problem
    return ""
