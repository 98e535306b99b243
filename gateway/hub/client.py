"""The hub API client (device scope, change feed, single devices, registered CAs) over mutual TLS.

Every failure leaves this module as one of two errors, with a sentence that says what happened:
`HubUnavailable` (refused, timed out, blackholed, 5xx, a hub certificate we cannot trust, a malformed
answer): the gateway goes offline and keeps serving its cache; `HubRejected` (401/403 or a TLS alert
about our identity certificate): the hub refused *us*, which an operator must fix.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from gateway.cache.records import RegisteredCA
from gateway.errors import HttpError, HttpFailure, HubError, HubRefusedContent, HubRejected, HubUnavailable
from gateway.http.client import HttpPool, Origin
from gateway.hub.wire import ChangePage, ScopePage, parse_cas, parse_change_page, parse_device, parse_scope_page
from gateway.records import DeviceRecord
from gateway.tls.contexts import build_hub_client_context

T = TypeVar("T")

# The hub caps a long poll at 120 s; our default stays under the ~60 s idle timeouts of common middleboxes.
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
# A sync request, a long poll and a few single-device fetches at once.
MAX_CONNECTIONS = 8
# Statuses that blame the request, not the hub: retrying the same bytes can never succeed.
PERMANENT_STATUSES = frozenset({400, 413, 422})
# A scope or change page of 1000 devices is well under 1 MiB, a CA list or a c2d batch a few MiB; far
# above that is a hub gone wrong, which must not grow the gateway's memory without bound.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# OpenSSL's names for the alerts a server sends when it does not accept the client certificate.
_IDENTITY_ALERTS = ("certificate required", "bad certificate", "unknown ca", "certificate unknown",
                    "certificate revoked", "certificate expired", "access denied")


class HubClient:
    """Talks to one hub as one gateway. Create inside the event loop; `close()` when done."""

    def __init__(
        self,
        *,
        url: str,
        hostname: str,
        gateway_id: str,
        ssl_context: ssl.SSLContext,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self.hostname = hostname
        self.gateway_id = gateway_id
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self._origin = Origin.from_url(self.url, hostname)
        self._base = f"{urlsplit(self.url).path}/gateways/{quote(gateway_id, safe='')}"
        self._ssl = ssl_context
        self._pool: HttpPool | None = None
        self._retired: set[HttpPool] = set()
        # Told the hub's Date header of every answer: the clock floor's best evidence (gateway.clock_watch).
        self.on_date: Callable[[datetime], object] | None = None

    @classmethod
    def from_files(
        cls,
        *,
        url: str,
        hostname: str,
        gateway_id: str,
        trust_bundle_cert: Path,
        identity_cert: Path,
        identity_pk: Path,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> HubClient:
        """A client presenting `identity_cert` and trusting the hub only if it chains to `trust_bundle_cert`."""
        return cls(
            url=url,
            hostname=hostname,
            gateway_id=gateway_id,
            ssl_context=build_hub_client_context(trust_bundle_cert, identity_cert, identity_pk),
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
        )

    # -- the API -----------------------------------------------------------------------------------

    async def scope_page(self, after: str | None, limit: int) -> ScopePage:
        """One page of this gateway's device scope, in device id order."""
        params: dict[str, str] = {"limit": str(limit)} | ({"after": after} if after is not None else {})
        return _parsed(parse_scope_page, await self._request("/devices", params), "device scope page")

    async def changes(self, since: int, limit: int) -> ChangePage:
        """Changes after `since` (at most `limit` devices), answered at once."""
        params = {"since": str(since), "limit": str(limit)}
        body = await self._request("/changes", params, reset_ok=True)
        return _reset_page(since) if body is None else _parsed(parse_change_page, body, "change page")

    async def wait_changes(self, since: int, limit: int, wait: float) -> ChangePage:
        """Like `changes`, but the hub holds the request up to `wait` seconds until there is a change."""
        params = {"since": str(since), "limit": str(limit), "timeout": f"{wait:g}"}
        body = await self._request("/changes/wait", params, reset_ok=True, extra_time=wait)
        return _reset_page(since) if body is None else _parsed(parse_change_page, body, "change page")

    async def device(self, device_id: str) -> DeviceRecord | None:
        """One device of this gateway's scope; None if the hub says it is not (404)."""
        body = await self._request(f"/devices/{quote(device_id, safe='')}", {}, missing_ok=True)
        return None if body is None else _parsed(parse_device, body, f"device {device_id}")

    async def cas(self) -> tuple[RegisteredCA, ...]:
        """The CA certificates registered in the hub."""
        return _parsed(parse_cas, await self._request("/cas", {}), "CA list")

    async def post_messages(self, body: bytes) -> None:
        """Hand a batch of device messages to the hub (idempotent by message_id); `body` is the batch as
        the API's JSON, {"messages": [...]} (gateway.upstream.forwarder.encode_batch)."""
        await self._request("/messages", {}, method="POST", content=body)

    async def wait_c2d(self, after: int, wait: float) -> tuple[list[dict[str, Any]], int]:
        """Cloud-to-device messages after cursor `after`, long-polled up to `wait` seconds."""
        params = {"after": str(after), "timeout": f"{wait:g}"}
        body = await self._request("/c2d/wait", params, extra_time=wait)
        messages = body.get("messages") if isinstance(body, dict) else None
        cursor = body.get("cursor") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not isinstance(cursor, int):
            raise HubUnavailable(f"the hub at {self.url} answered /c2d/wait with an unexpected shape")
        return messages, cursor

    async def ack_c2d(self, cursor: int) -> None:
        """Tell the hub every cloud-to-device message up to `cursor` reached the broker."""
        await self._request("/c2d/ack", {}, method="POST", payload={"cursor": cursor})

    def use_ssl_context(self, ssl_context: ssl.SSLContext) -> None:
        """Present a renewed identity from the next request on, without a restart.

        Requests in flight (long polls) finish on the old pool, whose connections are closed as they end;
        each has its deadline (request_timeout plus the long poll's wait), so none lingers.
        """
        old, self._ssl, self._pool = self._pool, ssl_context, None
        self._retired = {pool for pool in self._retired if not pool.drained}
        if old is not None:
            old.retire()
            self._retired.add(old)

    # -- twins and direct methods (wire format: docs/HUB_MOCK.md) ----------------------------------

    async def get_twin(self, device_id: str) -> dict[str, Any] | None:
        """The device's twin as the device sees it; None when the hub says it is not in our scope."""
        body = await self._request(f"/twins/{quote(device_id, safe='')}", {}, missing_ok=True)
        if body is not None and not isinstance(body, dict):
            raise HubUnavailable(f"the hub at {self.url} answered a twin GET with an unexpected shape")
        return body

    async def patch_reported(self, device_id: str, patch_id: str, patch: dict[str, Any]) -> int | None:
        """Apply a reported patch once per `patch_id`; the reported $version, None if the device is gone."""
        body = await self._request(f"/twins/{quote(device_id, safe='')}/reported", {}, method="POST",
                                   payload={"patch_id": patch_id, "patch": patch}, missing_ok=True)
        if body is None:
            return None
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, int):
            raise HubUnavailable(f"the hub at {self.url} answered a reported patch with an unexpected shape")
        return version

    async def wait_device_events(self, after: int, wait: float) -> tuple[list[dict[str, Any]], int]:
        """Desired patches and method calls after cursor `after` (-1: from now on), long-polled."""
        params = {"after": str(after), "timeout": f"{wait:g}"}
        body = await self._request("/device-events/wait", params, extra_time=wait)
        events = body.get("events") if isinstance(body, dict) else None
        cursor = body.get("cursor") if isinstance(body, dict) else None
        if not isinstance(events, list) or not isinstance(cursor, int):
            raise HubUnavailable(f"the hub at {self.url} answered /device-events/wait with an unexpected shape")
        return events, cursor

    async def method_response(self, request_id: str, device_id: str, status: int, payload: Any,
                              *, delivered: bool = True) -> bool:
        """A device's answer to a direct method; False if the hub no longer waits for it."""
        body = await self._request(
            f"/methods/{quote(request_id, safe='')}/response", {}, method="POST", missing_ok=True,
            payload={"device_id": device_id, "status": status, "payload": payload, "delivered": delivered},
        )
        return body is not None

    async def close(self) -> None:
        pools, self._retired = [*self._retired, *([self._pool] if self._pool else [])], set()
        self._pool = None
        for pool in pools:
            await pool.close()

    # -- HTTP and error mapping --------------------------------------------------------------------

    def _http(self) -> HttpPool:
        if self._pool is None:
            self._pool = HttpPool(self._origin, ssl_context=self._ssl, max_connections=MAX_CONNECTIONS,
                                  connect_timeout=self.connect_timeout)
        return self._pool

    async def _request(
        self,
        path: str,
        params: dict[str, str],
        *,
        missing_ok: bool = False,
        reset_ok: bool = False,
        extra_time: float = 0.0,
        method: str = "GET",
        payload: Any = None,
        content: bytes | None = None,
    ) -> Any:
        within = self.request_timeout + extra_time
        where = f"{self.url} ({self.hostname})"
        target = self._base + path + (f"?{urlencode(params, quote_via=quote)}" if params else "")
        headers = [("Accept", "application/json")]
        if method == "POST":
            headers.append(("Content-Type", "application/json"))
            if content is None:
                content = json.dumps(payload).encode()
        try:
            # Every request may go twice when a kept-alive connection turns out closed by the hub before any
            # byte of the answer: GETs only read; the hub keeps a message once per message_id and applies a
            # reported patch once per patch_id; a repeated c2d ack finds nothing left to mark below its
            # cursor; a repeated method answer gets 404, which method_response reports as "no longer waited
            # for", logged and not acted on.
            answer = await self._http().request(method, target, headers=headers, body=content or b"", within=within,
                                                max_body=MAX_ANSWER_BYTES, retry_stale=True)
        except HttpError as exc:
            raise transport_error(exc, where, self.gateway_id, within) from exc
        self._note_date(answer.header("Date"))
        status = answer.status
        body = _json(answer.body)
        if status == 200:
            if body is None:
                raise HubUnavailable(f"the hub at {where} answered {path} with something that is not JSON")
            return body
        reason, message = _reason(body)
        if status in (401, 403):
            raise HubRejected(
                f"the hub at {where} refused gateway {self.gateway_id} ({status} {reason}): {message}"
            )
        if status == 404 and missing_ok:
            return None
        if status == 409 and reset_ok and reason == "sequence_ahead":
            return None
        text = f"the hub at {where} answered {path} with {status} {reason}: {message}"
        if status in PERMANENT_STATUSES or (isinstance(body, dict) and body.get("permanent") is True):
            raise HubRefusedContent(status, reason, message, text)
        raise HubUnavailable(text)

    def _note_date(self, header: str | None) -> None:
        if self.on_date is None or not header:
            return
        try:
            date = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return
        if date.tzinfo is not None:
            self.on_date(date)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _reason(body: Any) -> tuple[str, str]:
    if isinstance(body, dict):
        return str(body.get("reason") or "no_reason"), str(body.get("message") or "")
    return "no_reason", ""


def _parsed(parse: Callable[[Any], T], body: Any, what: str) -> T:
    try:
        return parse(body)
    except ValueError as exc:
        raise HubUnavailable(f"the hub sent a malformed {what}: {exc}") from exc


def _reset_page(since: int) -> ChangePage:
    return ChangePage((), since, False, reset=True)


def transport_error(failure: HttpError, where: str, gateway_id: str, within: float) -> HubError:
    """What an HTTP failure means for the gateway: the hub is unavailable, or it refused our identity."""
    if failure.kind is HttpFailure.UNTRUSTED:
        return HubUnavailable(f"the hub at {where} presented a certificate we do not trust: {failure.detail}")
    if failure.kind is HttpFailure.TIMEOUT:
        return HubUnavailable(f"the hub at {where} did not answer within {within:g}s (down or blackholed?)")
    alert = next((alert for alert in _IDENTITY_ALERTS if alert in failure.detail.lower()), None)
    if alert is not None:
        return HubRejected(f"the hub at {where} refused the identity certificate of gateway {gateway_id} "
                           f"in the TLS handshake ({alert})")
    return HubUnavailable(f"cannot talk to the hub at {where}: {_DESCRIPTIONS.get(failure.kind, failure.detail)}")


_DESCRIPTIONS = {
    HttpFailure.REFUSED: "connection refused (nothing listens there: hub down?)",
    # A TLS 1.3 server that does not trust the client certificate often just drops the connection.
    HttpFailure.RESET: "connection reset by the hub (if this persists, check that the hub trusts our identity "
                       "certificate)",
}
