"""The admin HTTP API (plain HTTP, 127.0.0.1 only, optional bearer token): what the CLI and tests drive.

Every registry write wakes the gateways' long polls; every registered CA or identity cert joins the
API port's TLS trust store at once.
"""

from __future__ import annotations

import base64
import hmac
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.records import AuthType
from hub_mock import twin_api
from hub_mock.errors import Invalid, NotFound
from hub_mock.ingest import parse_payload, parse_properties
from hub_mock.registry import KEEP, DeviceUpdate, GatewayRegistration
from hub_mock.services import HubServices
from hub_mock.tls import trust
from hub_mock.wire import (
    device_json,
    error_middleware,
    json_body,
    json_object,
    query_int,
    reject,
    utc_iso,
)

log = logging.getLogger("hub_mock.admin")

_HUB: web.AppKey[HubServices] = web.AppKey("hub", HubServices)
_DEVICE_FIELDS = {"status", "auth_type", "primary_thumbprint", "secondary_thumbprint", "parent"}
MAX_MESSAGES_PAGE = 10_000


def _hub(request: web.Request) -> HubServices:
    return request.app[_HUB]


def _token_middleware(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return reject(
                401, "unauthorized", "send the admin token from hub.toml as 'Authorization: Bearer ...'"
            )
        return await handler(request)

    return middleware


def _enabled(value: object) -> bool:
    if value not in ("enabled", "disabled"):
        raise Invalid(f"status must be 'enabled' or 'disabled', got {value!r}")
    return value == "enabled"


def _auth_type(value: object) -> AuthType:
    try:
        return AuthType(value)
    except ValueError as exc:
        raise Invalid(f"auth_type must be 'selfSigned' or 'certificateAuthority', got {value!r}") from exc


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise Invalid(f"{key} must be a string or null")
    return value


def _gateway_json(registration: GatewayRegistration) -> dict[str, Any]:
    return {
        "gateway_id": registration.gateway_id,
        "primary_thumbprint": registration.primary_thumbprint,
        "secondary_thumbprint": registration.secondary_thumbprint,
        "has_identity_cert": registration.identity_pem is not None,
    }


async def _health(request: web.Request) -> web.Response:
    hub = _hub(request)
    sequence = await hub.db.run(hub.registry.latest_sequence)
    return web.json_response(
        {
            "status": "ok",
            "api_port": hub.api_port,
            "admin_port": hub.admin_port,
            "sequence": sequence,
            "faults": hub.faults.current.to_json(),
            "waiting": hub.wakeup.waiting,
        }
    )


async def _list_devices(request: web.Request) -> web.Response:
    hub = _hub(request)
    devices = await hub.db.run(hub.registry.list_devices, request.query.get("parent"))
    return web.json_response({"devices": [device_json(d) for d in devices]})


async def _add_device(request: web.Request) -> web.Response:
    hub = _hub(request)
    body = json_object(await json_body(request))
    record = await hub.db.run(
        hub.registry.add_device,
        body.get("device_id"),
        auth_type=_auth_type(body.get("auth_type", AuthType.SELF_SIGNED.value)),
        parent=_optional_str(body, "parent"),
        primary_thumbprint=_optional_str(body, "primary_thumbprint"),
        secondary_thumbprint=_optional_str(body, "secondary_thumbprint"),
        enabled=_enabled(body.get("status", "enabled")),
    )
    hub.wakeup.fire()
    log.info("device added: %s parent=%s auth=%s", record.device_id, record.parent, record.auth_type.value)
    return web.json_response(device_json(record), status=201)


async def _get_device(request: web.Request) -> web.Response:
    hub, device_id = _hub(request), request.match_info["device_id"]
    record = await hub.db.run(hub.registry.get_device, device_id)
    if record is None:
        raise NotFound(f"device {device_id} is not registered")
    return web.json_response(device_json(record))


async def _update_device(request: web.Request) -> web.Response:
    hub, device_id = _hub(request), request.match_info["device_id"]
    body = json_object(await json_body(request))
    unknown = set(body) - _DEVICE_FIELDS
    if unknown:
        raise Invalid(f"unknown device fields {sorted(unknown)}; known: {sorted(_DEVICE_FIELDS)}")
    update = DeviceUpdate(
        enabled=_enabled(body["status"]) if "status" in body else KEEP,
        auth_type=_auth_type(body["auth_type"]) if "auth_type" in body else KEEP,
        primary_thumbprint=_optional_str(body, "primary_thumbprint")
        if "primary_thumbprint" in body
        else KEEP,
        secondary_thumbprint=_optional_str(body, "secondary_thumbprint")
        if "secondary_thumbprint" in body
        else KEEP,
        parent=_optional_str(body, "parent") if "parent" in body else KEEP,
    )
    record = await hub.db.run(hub.registry.update_device, device_id, update)
    hub.wakeup.fire()
    log.info("device updated: %s %s", device_id, sorted(body))
    return web.json_response(device_json(record))


async def _remove_device(request: web.Request) -> web.Response:
    hub, device_id = _hub(request), request.match_info["device_id"]
    await hub.db.run(hub.registry.remove_device, device_id)
    hub.wakeup.fire()
    log.info("device removed: %s", device_id)
    return web.json_response({"deleted": device_id})


async def _list_cas(request: web.Request) -> web.Response:
    hub = _hub(request)
    cas = await hub.db.run(hub.registry.list_cas)
    return web.json_response(
        {"cas": [{"name": ca.name, "pem": ca.pem, "thumbprint": ca.thumbprint} for ca in cas]}
    )


async def _add_ca(request: web.Request) -> web.Response:
    hub = _hub(request)
    body = json_object(await json_body(request))
    ca = await hub.db.run(hub.registry.add_ca, body.get("name"), body.get("pem"))
    trust(hub.api_context, [ca.pem])
    hub.wakeup.fire()
    log.info("CA added: %s thumbprint=%s", ca.name, ca.thumbprint)
    return web.json_response({"name": ca.name, "thumbprint": ca.thumbprint}, status=201)


async def _replace_ca(request: web.Request) -> web.Response:
    hub, name = _hub(request), request.match_info["name"]
    body = json_object(await json_body(request))
    ca = await hub.db.run(hub.registry.replace_ca, name, body.get("pem"))
    trust(hub.api_context, [ca.pem])
    hub.wakeup.fire()
    log.info("CA replaced: %s thumbprint=%s", ca.name, ca.thumbprint)
    return web.json_response({"name": ca.name, "thumbprint": ca.thumbprint})


async def _remove_ca(request: web.Request) -> web.Response:
    hub, name = _hub(request), request.match_info["name"]
    ca = await hub.db.run(hub.registry.remove_ca, name)
    hub.wakeup.fire()
    # An ssl.SSLContext cannot forget a CA: gateway identity certs chained to it still pass the TLS
    # handshake until the hub restarts, and are then refused by thumbprint like any unregistered one.
    log.info("CA removed: %s thumbprint=%s", ca.name, ca.thumbprint)
    return web.json_response({"removed": ca.name, "thumbprint": ca.thumbprint})


async def _list_gateways(request: web.Request) -> web.Response:
    hub = _hub(request)
    gateways = await hub.db.run(hub.registry.list_gateways)
    return web.json_response({"gateways": [_gateway_json(g) for g in gateways]})


async def _put_gateway(
    request: web.Request, gateway_id: object, body: dict[str, Any], replace: bool
) -> web.Response:
    hub = _hub(request)
    registration = await hub.db.run(
        hub.registry.put_gateway,
        gateway_id,
        primary_thumbprint=_optional_str(body, "primary_thumbprint"),
        secondary_thumbprint=_optional_str(body, "secondary_thumbprint"),
        identity_pem=_optional_str(body, "identity_pem"),
        replace=replace,
    )
    if registration.identity_pem is not None:
        trust(hub.api_context, [registration.identity_pem])
    hub.wakeup.fire()
    log.info(
        "gateway %s: %s primary=%s",
        "updated" if replace else "added",
        registration.gateway_id,
        registration.primary_thumbprint,
    )
    return web.json_response(_gateway_json(registration), status=200 if replace else 201)


async def _add_gateway(request: web.Request) -> web.Response:
    body = json_object(await json_body(request))
    return await _put_gateway(request, body.get("gateway_id"), body, replace=False)


async def _update_gateway(request: web.Request) -> web.Response:
    body = json_object(await json_body(request))
    return await _put_gateway(request, request.match_info["gateway_id"], body, replace=True)


async def _messages(request: web.Request) -> web.Response:
    hub = _hub(request)
    after = query_int(request, "after", 0, 0, 2**62)
    limit = query_int(request, "limit", 1000, 1, MAX_MESSAGES_PAGE)
    messages, total = await hub.db.run(
        hub.messages.query, device_id=request.query.get("device"), after=after, limit=limit
    )
    return web.json_response(
        {
            "messages": [
                {
                    "id": m.id,
                    "message_id": m.message_id,
                    "device_id": m.device_id,
                    "gateway_id": m.gateway_id,
                    "enqueued_time": utc_iso(m.enqueued_time),
                    "received_time": utc_iso(m.received_time),
                    "properties": m.properties,
                    "payload_b64": base64.b64encode(m.payload).decode(),
                    "kind": m.kind,
                    "system_properties": m.system_properties,
                }
                for m in messages
            ],
            "next": messages[-1].id if len(messages) == limit else None,
            "total": total,
        }
    )


async def _send_c2d(request: web.Request) -> web.Response:
    hub = _hub(request)
    body = json_object(await json_body(request))
    device_id = body.get("device_id")
    if not isinstance(device_id, str):
        raise Invalid("device_id must be a string")
    payload = parse_payload(body.get("payload_b64", ""), "payload_b64")
    properties = parse_properties(body.get("properties"), "properties")
    seq = await hub.db.run(hub.c2d.send, device_id, payload, properties, hub.clock())
    hub.wakeup.fire()
    log.info("c2d queued: seq=%d device=%s bytes=%d", seq, device_id, len(payload))
    return web.json_response({"seq": seq}, status=201)


async def _faults(request: web.Request) -> web.Response:
    return web.json_response(_hub(request).faults.current.to_json())


async def _set_fault(request: web.Request) -> web.Response:
    body = json_object(await json_body(request))
    action, value = body.get("action"), body.get("value")
    if not isinstance(action, str) or not (
        value is None or (isinstance(value, int) and not isinstance(value, bool))
    ):
        raise Invalid('expected {"action": "down|up|blackhole|error|latency|clear", "value": N or null}')
    faults = await _hub(request).faults.apply(action, value)
    return web.json_response(faults.to_json())


def build_admin_app(hub: HubServices, token: str | None) -> web.Application:
    """The aiohttp app of the admin port; with `token`, every call needs `Authorization: Bearer token`."""
    middlewares = [error_middleware] + ([_token_middleware(token)] if token else [])
    app = web.Application(middlewares=middlewares)
    app[_HUB] = hub
    app.router.add_get("/admin/health", _health)
    app.router.add_get("/admin/devices", _list_devices)
    app.router.add_post("/admin/devices", _add_device)
    app.router.add_get("/admin/devices/{device_id}", _get_device)
    app.router.add_patch("/admin/devices/{device_id}", _update_device)
    app.router.add_delete("/admin/devices/{device_id}", _remove_device)
    app.router.add_get("/admin/cas", _list_cas)
    app.router.add_post("/admin/cas", _add_ca)
    app.router.add_put("/admin/cas/{name}", _replace_ca)
    app.router.add_delete("/admin/cas/{name}", _remove_ca)
    app.router.add_get("/admin/gateways", _list_gateways)
    app.router.add_post("/admin/gateways", _add_gateway)
    app.router.add_put("/admin/gateways/{gateway_id}", _update_gateway)
    app.router.add_get("/admin/messages", _messages)
    app.router.add_post("/admin/c2d", _send_c2d)
    app.router.add_get("/admin/faults", _faults)
    app.router.add_post("/admin/faults", _set_fault)
    twin_api.add_admin_routes(app, hub)
    return app
