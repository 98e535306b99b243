"""The gateway-facing HTTPS API: device scope, deltas and long polls, CAs, telemetry ingest, C2D.

Every route is under /gateways/{gw}/ and answers only the gateway whose identity cert the TLS peer
presented (identity.authenticate_gateway); anything else is 401 with a reason.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509

from hub_mock import twin_api
from hub_mock.c2d import C2DMessage
from hub_mock.errors import Invalid, NotFound, SequenceAhead
from hub_mock.est_auth import authenticate_est_gateway
from hub_mock.faults import fault_middleware
from hub_mock.identity import PeerThumbprints, authenticate_gateway
from hub_mock.ingest import parse_batch
from hub_mock.registry import ChangePage, RegisteredCA
from hub_mock.services import HubServices
from hub_mock.wire import (
    device_json,
    error_middleware,
    json_body,
    json_object,
    query_int,
    query_seconds,
)

log = logging.getLogger("hub_mock.api")
T = TypeVar("T")

DEFAULT_PAGE = 500
MAX_PAGE = 5000
DEFAULT_WAIT_SECONDS = 30.0
# A long poll never outlives this: proxies and client timeouts in the field sit around 2 minutes.
MAX_WAIT_SECONDS = 120.0
MAX_SEQ = 2**62
# Batches of ~500 telemetry messages of up to 256 KiB (IoT Hub's limit), base64-inflated, fit in 64 MiB only
# when most are small, which they are; a bigger body is refused by aiohttp with 413.
MAX_BODY_BYTES = 64 * 1024 * 1024

_HUB: web.AppKey[HubServices] = web.AppKey("hub", HubServices)


def _hub(request: web.Request) -> HubServices:
    return request.app[_HUB]


def _peer(request: web.Request) -> PeerThumbprints | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return PeerThumbprints.of_der(der) if der else None


def _peer_cert(request: web.Request) -> x509.Certificate | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


@web.middleware
async def gateway_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    gateway_id = request.match_info.get("gw")
    if gateway_id is None:
        return await handler(request)
    hub = _hub(request)
    peer = _peer(request)
    registration = await hub.db.run(hub.registry.get_gateway, gateway_id)
    decision = authenticate_gateway(gateway_id, registration, peer)
    if not decision.ok and hub.est_ca is not None:
        decision = authenticate_est_gateway(gateway_id, registration, _peer_cert(request), hub.est_ca,
                                            hub.clock()) or decision
    if not decision.ok:
        log.warning(
            "rejected gateway=%s sha256=%s reason=%s: %s",
            gateway_id,
            peer.sha256 if peer else "-",
            decision.reason.value,
            decision.message,
        )
        return web.json_response({"reason": decision.reason.value, "message": decision.message}, status=401)
    return await handler(request)


async def _devices(request: web.Request) -> web.Response:
    hub, gateway_id = _hub(request), request.match_info["gw"]
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = request.query.get("after") or None
    page = await hub.db.run(hub.registry.scope_page, gateway_id, after=after, limit=limit)
    return web.json_response(
        {"devices": [device_json(d) for d in page.devices], "next": page.next, "sequence": page.sequence}
    )


async def _device(request: web.Request) -> web.Response:
    hub, gateway_id, device_id = _hub(request), request.match_info["gw"], request.match_info["device_id"]
    record = await hub.db.run(hub.registry.get_device, device_id)
    # A device of another gateway's scope answers exactly like an unknown one: nothing leaks.
    if record is None or record.parent != gateway_id:
        raise NotFound(f"device {device_id} is not in the device scope of gateway {gateway_id}")
    return web.json_response(device_json(record))


def _changes_json(page: ChangePage) -> dict[str, Any]:
    # "cas" appears only when a CA changed in the page's range: the whole list of registered CAs.
    cas = {} if page.cas is None else {"cas": [_ca_json(ca) for ca in page.cas]}
    return cas | {
        "changes": [
            {
                "seq": change.seq,
                "device_id": change.device_id,
                "op": "upsert" if change.device is not None else "delete",
                "device": device_json(change.device) if change.device is not None else None,
            }
            for change in page.changes
        ],
        "sequence": page.sequence,
        "more": page.more,
    }


def _ca_json(ca: RegisteredCA) -> dict[str, Any]:
    return {"name": ca.name, "pem": ca.pem, "thumbprint": ca.thumbprint}


async def _long_poll(
    hub: HubServices, wait_seconds: float, read: Callable[[], Awaitable[T]], ready: Callable[[T], bool]
) -> T:
    """`read()` until `ready(result)` or `wait_seconds` pass; woken by every hub write."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        armed = hub.wakeup.arm()
        result = await read()
        remaining = deadline - loop.time()
        if ready(result) or remaining <= 0:
            return result
        await hub.wakeup.wait(armed, remaining)


async def _read_changes(request: web.Request, wait_seconds: float) -> web.Response:
    hub, gateway_id = _hub(request), request.match_info["gw"]
    since = query_int(request, "since", 0, 0, MAX_SEQ)
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)

    async def read() -> ChangePage:
        return await hub.db.run(hub.registry.changes_since, gateway_id, since=since, limit=limit)

    # A `since` beyond the latest seq never becomes ready by waiting: answer at once.
    page = await _long_poll(
        hub, wait_seconds, read, lambda page: bool(page.changes) or page.cas is not None or since > page.sequence
    )
    if since > page.sequence:
        raise SequenceAhead(
            f"since={since} is beyond this hub's latest change {page.sequence}: the registry was reset; "
            "read the full scope again and follow its sequence"
        )
    return web.json_response(_changes_json(page))


async def _changes(request: web.Request) -> web.Response:
    return await _read_changes(request, 0)


async def _changes_wait(request: web.Request) -> web.Response:
    return await _read_changes(
        request, query_seconds(request, "timeout", DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS)
    )


async def _cas(request: web.Request) -> web.Response:
    hub = _hub(request)
    cas = await hub.db.run(hub.registry.list_cas)
    return web.json_response(
        {"cas": [{"name": ca.name, "pem": ca.pem, "thumbprint": ca.thumbprint} for ca in cas]}
    )


async def _messages(request: web.Request) -> web.Response:
    hub, gateway_id = _hub(request), request.match_info["gw"]
    batch = parse_batch(await json_body(request))
    result = await hub.db.run(hub.messages.store, gateway_id, batch, hub.clock())
    return web.json_response({"accepted": result.accepted, "duplicates": result.duplicates})


async def _c2d_wait(request: web.Request) -> web.Response:
    hub, gateway_id = _hub(request), request.match_info["gw"]
    after = query_int(request, "after", 0, 0, MAX_SEQ)
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    timeout = query_seconds(request, "timeout", DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS)

    async def read() -> list[C2DMessage]:
        return await hub.db.run(hub.c2d.pending, gateway_id, after=after, limit=limit)

    messages = await _long_poll(hub, timeout, read, bool)
    return web.json_response(
        {
            "messages": [
                {
                    "seq": m.seq,
                    "device_id": m.device_id,
                    "payload_b64": base64.b64encode(m.payload).decode(),
                    "properties": m.properties,
                }
                for m in messages
            ],
            "cursor": messages[-1].seq if messages else after,
        }
    )


async def _c2d_ack(request: web.Request) -> web.Response:
    hub, gateway_id = _hub(request), request.match_info["gw"]
    cursor = json_object(await json_body(request)).get("cursor")
    if not isinstance(cursor, int) or isinstance(cursor, bool) or cursor < 0:
        raise Invalid('expected {"cursor": N} with N >= 0', "bad_request")
    acknowledged = await hub.db.run(hub.c2d.ack, gateway_id, cursor, hub.clock())
    return web.json_response({"acknowledged": acknowledged})


def build_api_app(hub: HubServices) -> web.Application:
    """The aiohttp app behind the gateway-facing port (TLS is the listener's business)."""
    app = web.Application(
        middlewares=[error_middleware, fault_middleware(hub.faults), gateway_auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[_HUB] = hub
    app.router.add_get("/gateways/{gw}/devices", _devices)
    app.router.add_get("/gateways/{gw}/devices/{device_id}", _device)
    app.router.add_get("/gateways/{gw}/changes", _changes)
    app.router.add_get("/gateways/{gw}/changes/wait", _changes_wait)
    app.router.add_get("/gateways/{gw}/cas", _cas)
    app.router.add_post("/gateways/{gw}/messages", _messages)
    app.router.add_get("/gateways/{gw}/c2d/wait", _c2d_wait)
    app.router.add_post("/gateways/{gw}/c2d/ack", _c2d_ack)
    twin_api.add_gateway_routes(app, hub)
    return app
