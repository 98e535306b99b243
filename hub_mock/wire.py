"""JSON shapes and request parsing shared by the gateway-facing API and the admin API."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.records import DeviceRecord
from hub_mock.errors import HubMockError, Invalid

log = logging.getLogger("hub_mock.http")


def device_json(record: DeviceRecord) -> dict[str, Any]:
    """DeviceJSON: the one shape a device has on the wire."""
    return {
        "device_id": record.device_id,
        "status": "enabled" if record.enabled else "disabled",
        "auth_type": record.auth_type.value,
        "primary_thumbprint": record.primary_thumbprint,
        "secondary_thumbprint": record.secondary_thumbprint,
        "parent": record.parent,
        "generation": record.generation,
    }


def utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def reject(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"reason": reason, "message": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HubMockError -> its status and `{"reason", "message"}`; unknown routes get the same JSON shape."""
    try:
        return await handler(request)
    except HubMockError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPNotFound:
        return reject(404, "not_found", f"no such endpoint: {request.method} {request.path}")
    except web.HTTPMethodNotAllowed:
        return reject(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or Invalid naming it."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise Invalid(f"query parameter {name}={raw!r} is not an integer", "bad_request") from exc
    if not low <= value <= high:
        raise Invalid(f"query parameter {name}={value} is outside {low}..{high}", "bad_request")
    return value


def query_seconds(request: web.Request, name: str, default: float, high: float) -> float:
    """A non-negative number of seconds, capped at `high` (a long poll never outlives the cap)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise Invalid(f"query parameter {name}={raw!r} is not a number of seconds", "bad_request") from exc
    if not value >= 0:
        raise Invalid(f"query parameter {name} must be >= 0", "bad_request")
    return min(value, high)


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Invalid(f"the request body is not JSON: {exc}", "bad_request") from exc


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid("expected a JSON object", "bad_request")
    return body
