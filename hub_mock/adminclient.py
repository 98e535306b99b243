"""A small synchronous client of the admin API (stdlib only), for the CLI and for tests."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class AdminError(Exception):
    """The admin API refused a call (status, reason, message) or could not be reached (status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"{reason}: {message}" if status == 0 else f"{status} {reason}: {message}")


class AdminClient:
    """Calls `http://127.0.0.1:PORT/admin/...`; each method returns the decoded JSON answer."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.twins = TwinAdmin(self)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **query: Any) -> Any:
        params = {k: v for k, v in query.items() if v is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) URL from config
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read())
            except ValueError:
                detail = {}
            raise AdminError(
                exc.code, detail.get("reason", "http_error"), detail.get("message", str(exc))
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(
                0, "unreachable", f"cannot reach the hub-mock admin API at {self.url}: {reason}"
            ) from exc

    # -- registry ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return dict(self.call("GET", "/admin/health"))

    def add_gateway(
        self,
        gateway_id: str,
        *,
        thumbprint: str | None = None,
        secondary: str | None = None,
        cert_pem: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "gateway_id": gateway_id,
            "primary_thumbprint": thumbprint,
            "secondary_thumbprint": secondary,
            "identity_pem": cert_pem,
        }
        return dict(self.call("POST", "/admin/gateways", body))

    def update_gateway(
        self,
        gateway_id: str,
        *,
        thumbprint: str | None = None,
        secondary: str | None = None,
        cert_pem: str | None = None,
    ) -> dict[str, Any]:
        body = {"primary_thumbprint": thumbprint, "secondary_thumbprint": secondary, "identity_pem": cert_pem}
        return dict(self.call("PUT", f"/admin/gateways/{_quote(gateway_id)}", body))

    def gateways(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/admin/gateways")["gateways"])

    def add_ca(self, name: str, pem: str) -> dict[str, Any]:
        return dict(self.call("POST", "/admin/cas", {"name": name, "pem": pem}))

    def replace_ca(self, name: str, pem: str) -> dict[str, Any]:
        return dict(self.call("PUT", f"/admin/cas/{_quote(name)}", {"pem": pem}))

    def remove_ca(self, name: str) -> dict[str, Any]:
        return dict(self.call("DELETE", f"/admin/cas/{_quote(name)}"))

    def cas(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/admin/cas")["cas"])

    def add_device(
        self,
        device_id: str,
        *,
        parent: str | None,
        thumbprint: str | None = None,
        secondary: str | None = None,
        ca: bool = False,
        enabled: bool = True,
    ) -> dict[str, Any]:
        """A selfSigned device with `thumbprint`, or with `ca=True` a certificateAuthority device."""
        body = {
            "device_id": device_id,
            "parent": parent,
            "auth_type": "certificateAuthority" if ca else "selfSigned",
            "primary_thumbprint": thumbprint,
            "secondary_thumbprint": secondary,
            "status": "enabled" if enabled else "disabled",
        }
        return dict(self.call("POST", "/admin/devices", body))

    def update_device(self, device_id: str, **fields: Any) -> dict[str, Any]:
        """Change DeviceJSON fields: status, auth_type, primary_thumbprint, secondary_thumbprint, parent."""
        return dict(self.call("PATCH", f"/admin/devices/{_quote(device_id)}", fields))

    def disable(self, device_id: str) -> dict[str, Any]:
        return self.update_device(device_id, status="disabled")

    def enable(self, device_id: str) -> dict[str, Any]:
        return self.update_device(device_id, status="enabled")

    def remove_device(self, device_id: str) -> None:
        self.call("DELETE", f"/admin/devices/{_quote(device_id)}")

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/admin/devices/{_quote(device_id)}"))

    def devices(self, parent: str | None = None) -> list[dict[str, Any]]:
        return list(self.call("GET", "/admin/devices", parent=parent)["devices"])

    # -- telemetry, C2D, faults --------------------------------------------------------------------

    def messages(self, device_id: str | None = None, *, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        """`{"messages": [...], "next": id|None, "total": n}`; payloads as `payload_b64`."""
        return dict(self.call("GET", "/admin/messages", device=device_id, after=after, limit=limit))

    def send_c2d(self, device_id: str, payload: bytes, properties: dict[str, str] | None = None) -> int:
        body = {
            "device_id": device_id,
            "payload_b64": base64.b64encode(payload).decode(),
            "properties": properties or {},
        }
        return int(self.call("POST", "/admin/c2d", body)["seq"])

    def fault(self, action: str, value: int | None = None) -> dict[str, Any]:
        """down | up | blackhole | error STATUS | latency MS | clear; returns the fault state."""
        return dict(self.call("POST", "/admin/faults", {"action": action, "value": value}))


class TwinAdmin:
    """Twins and direct methods on the admin API (`AdminClient.twins`)."""

    def __init__(self, client: AdminClient) -> None:
        self.client = client

    def show(self, device_id: str) -> dict[str, Any]:
        return dict(self.client.call("GET", f"/admin/twins/{_quote(device_id)}"))

    def set_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(self.client.call("PATCH", f"/admin/twins/{_quote(device_id)}/desired", patch))

    def reported_patches(self, device_id: str) -> list[dict[str, Any]]:
        return list(self.client.call("GET", f"/admin/twins/{_quote(device_id)}/reported-patches")["patches"])

    def invoke(self, device_id: str, method: str, payload: Any = None, timeout: int = 30) -> dict[str, Any]:
        """{"status", "payload"} from the device; AdminError 404 (not connected) or 504 (no answer in time)."""
        # The HTTP call outlives the method's own timeout, so the hub's 504 is what the caller sees.
        waiting = AdminClient(self.client.url, self.client.token, timeout + 10.0)
        return dict(waiting.call("POST", f"/admin/methods/{_quote(device_id)}/{_quote(method)}",
                                 {"payload": payload, "timeout": timeout}))


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
