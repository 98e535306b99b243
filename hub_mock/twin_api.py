"""Twins and direct methods over the hub's two HTTP ports (wire format: docs/HUB_MOCK.md).

Gateway port (mTLS, under /gateways/{gw}/, the gateway may only name devices in its own scope):
  GET  twins/{device}                  the twin as the device sees it
  POST twins/{device}/reported         {"patch_id", "patch"} -> {"version", "duplicate"}
  GET  device-events/wait?after=N      desired patches and method calls, long-polled
  POST methods/{request_id}/response   {"device_id", "status", "payload", "delivered"}
Admin port:
  GET  /admin/twins/{device}           the service view with $metadata
  PATCH /admin/twins/{device}/desired  a merge patch
  GET  /admin/twins/{device}/reported-patches
  POST /admin/methods/{device}/{name}  {"payload", "timeout"} -> {"status", "payload"}; 404, 504
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from hub_mock.errors import Invalid, MethodTimeout, NotFound
from hub_mock.methods import MAX_TIMEOUT, MIN_TIMEOUT, MethodOutcome
from hub_mock.services import HubServices
from hub_mock.twins import check_patch
from hub_mock.wire import json_body, json_object, query_int, query_seconds

log = logging.getLogger("hub_mock.twins")

MAX_SEQ = 2**62
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 120.0


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


async def _in_scope(hub: HubServices, gateway_id: str, device_id: str) -> None:
    record = await hub.db.run(hub.registry.get_device, device_id)
    if record is None or record.parent != gateway_id:
        raise NotFound(f"device {device_id} is not in the device scope of gateway {gateway_id}")


def add_gateway_routes(app: web.Application, hub: HubServices) -> None:
    """The twin and method routes of the gateway-facing API."""

    async def get_twin(request: web.Request) -> web.Response:
        gateway_id, device_id = request.match_info["gw"], request.match_info["device_id"]
        await _in_scope(hub, gateway_id, device_id)
        view = await hub.db.run(hub.twins.get, device_id)
        return web.json_response(view.device_json())

    async def post_reported(request: web.Request) -> web.Response:
        gateway_id, device_id = request.match_info["gw"], request.match_info["device_id"]
        body = json_object(await json_body(request))
        patch_id = body.get("patch_id")
        if not isinstance(patch_id, str) or not 0 < len(patch_id) <= 64:
            raise Invalid("patch_id: expected 1-64 characters", "bad_request")
        patch = check_patch(body.get("patch"), "patch")
        await _in_scope(hub, gateway_id, device_id)
        version, duplicate = await hub.db.run(
            hub.twins.apply_reported, gateway_id, device_id, patch_id, patch, hub.clock())
        log.info("reported patch %s device=%s version=%d%s", patch_id, device_id, version,
                 " (duplicate, ignored)" if duplicate else "")
        return web.json_response({"version": version, "duplicate": duplicate})

    async def wait_events(request: web.Request) -> web.Response:
        gateway_id = request.match_info["gw"]
        after = query_int(request, "after", -1, -1, MAX_SEQ)
        timeout = query_seconds(request, "timeout", DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS)
        events = hub.events
        if after < 0 or after > events.latest:  # "from now on", or the hub restarted under the gateway
            return web.json_response({"events": [], "cursor": events.latest})
        events.poll_started(gateway_id)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                armed = hub.wakeup.arm()
                found = events.after(gateway_id, after)
                remaining = deadline - loop.time()
                if found or remaining <= 0:
                    break
                await hub.wakeup.wait(armed, remaining)
        finally:
            events.poll_ended(gateway_id, _monotonic())
        return web.json_response({"events": [e.to_json() for e in found],
                                  "cursor": found[-1].seq if found else after})

    async def method_response(request: web.Request) -> web.Response:
        body = json_object(await json_body(request))
        device_id, status = body.get("device_id"), body.get("status")
        if not isinstance(device_id, str) or not isinstance(status, int) or isinstance(status, bool):
            raise Invalid('expected {"device_id": str, "status": int, "payload": ..., "delivered": bool}',
                          "bad_request")
        outcome = MethodOutcome(status, body.get("payload"), bool(body.get("delivered", True)))
        if not hub.events.answer(request.match_info["request_id"], device_id, outcome):
            raise NotFound("no method call waits for this answer (it timed out, or names another device)",
                           "method_not_pending")
        return web.json_response({"accepted": True})

    app.router.add_get("/gateways/{gw}/twins/{device_id}", get_twin)
    app.router.add_post("/gateways/{gw}/twins/{device_id}/reported", post_reported)
    app.router.add_get("/gateways/{gw}/device-events/wait", wait_events)
    app.router.add_post("/gateways/{gw}/methods/{request_id}/response", method_response)


def add_admin_routes(app: web.Application, hub: HubServices) -> None:
    """The twin and method routes of the admin API."""

    async def show_twin(request: web.Request) -> web.Response:
        view = await hub.db.run(hub.twins.get, request.match_info["device_id"])
        return web.json_response(view.full_json())

    async def set_desired(request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        patch = check_patch(await json_body(request), "body")
        view = await hub.db.run(hub.twins.set_desired, device_id, patch, hub.clock())
        record = await hub.db.run(hub.registry.get_device, device_id)
        if record is not None and record.parent is not None:
            hub.events.add(record.parent, device_id, "desired", {"version": view.desired.version, "patch": patch})
            hub.wakeup.fire()
        log.info("desired patch device=%s version=%d", device_id, view.desired.version)
        return web.json_response(view.full_json())

    async def reported_patches(request: web.Request) -> web.Response:
        patches = await hub.db.run(hub.twins.reported_patches, request.match_info["device_id"])
        return web.json_response({"patches": patches})

    async def invoke(request: web.Request) -> web.Response:
        device_id, method = request.match_info["device_id"], request.match_info["method"]
        body = json_object(await json_body(request))
        timeout = body.get("timeout", 30)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
            raise Invalid(f"timeout: expected whole seconds in {MIN_TIMEOUT}..{MAX_TIMEOUT}", "bad_request")
        record = await hub.db.run(hub.registry.get_device, device_id)
        if record is None:
            raise NotFound(f"device {device_id} is not registered", "device_not_found")
        if record.parent is None:
            raise NotFound(f"device {device_id} is not connected: it is in no gateway's device scope, and "
                           "hub-mock takes no direct device connections", "device_not_online")
        if not hub.events.online(record.parent, _monotonic()):
            raise NotFound(f"device {device_id} is not connected: its gateway {record.parent} is offline "
                           "(no long poll from it); try again when the gateway is back", "device_not_online")
        request_id, future = hub.events.call(record.parent, device_id, method, body.get("payload"), timeout)
        hub.wakeup.fire()
        try:
            async with asyncio.timeout(timeout):
                outcome = await future
        except TimeoutError:
            raise MethodTimeout(f"device {device_id} did not answer method {method!r} within {timeout}s") from None
        finally:
            hub.events.forget(request_id)
        if not outcome.delivered:
            raise NotFound(f"device {device_id} is not connected to gateway {record.parent} (or has not "
                           "subscribed to $iothub/methods/POST/#)", "device_not_online")
        log.info("method %s device=%s answered %d", method, device_id, outcome.status)
        result: dict[str, Any] = {"status": outcome.status, "payload": outcome.payload}
        return web.json_response(result)

    app.router.add_get("/admin/twins/{device_id}", show_twin)
    app.router.add_patch("/admin/twins/{device_id}/desired", set_desired)
    app.router.add_get("/admin/twins/{device_id}/reported-patches", reported_patches)
    app.router.add_post("/admin/methods/{device_id}/{method}", invoke)
