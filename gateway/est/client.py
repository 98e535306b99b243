"""The EST client: RFC 7030 over HTTPS (gateway.http). Every failure leaves as an EstError subclass with a
reason code and a sentence that says what to do (see gateway.errors)."""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gateway.errors import EstRejected, EstReplyInvalid, EstUnavailable, HttpError, HttpFailure, PKIError
from gateway.est.csr import base64_body
from gateway.est.pkcs7 import MAX_REPLY_BYTES, parse_certs_only
from gateway.http.client import fetch

DEFAULT_TIMEOUT = 30.0  # an enrollment may wait on a slow HSM-backed CA; still bounded
# OpenSSL's names for the alerts a server sends when it does not accept the client certificate.
_CLIENT_CERT_ALERTS = ("certificate required", "bad certificate", "unknown ca", "certificate unknown",
                       "certificate revoked", "certificate expired", "access denied", "unsupported certificate")
_REASON = re.compile(r"^([a-z][a-z0-9_]{2,40}): (.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """How to authenticate one request: a client cert (bootstrap or identity), or none (Basic only)."""

    kind: str  # "bootstrap" | "identity" | "basic"
    cert: Path | None = None
    key: Path | None = None


class EstClient:
    """Talks to one EST server; a fresh connection per call (calls are rare and certificates change)."""

    def __init__(self, trusted_certs: Sequence[Path], username: str | None = None, password: str | None = None,
                 *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.trusted_certs = tuple(trusted_certs)
        # RFC 7617: user-id ":" password, UTF-8, base64.
        self._basic = ("Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
                       if username is not None else None)
        self.timeout = timeout

    def context(self, auth: ClientAuth) -> ssl.SSLContext:
        """Verify the EST server against trusted_certs (the system's roots when empty) and present `auth`."""
        ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            for path in self.trusted_certs:
                ctx.load_verify_locations(cafile=str(path))
            if auth.cert is not None and auth.key is not None:
                ctx.load_cert_chain(str(auth.cert), str(auth.key))
        except (ssl.SSLError, OSError) as exc:
            raise PKIError(f"cannot set up TLS to the EST server with the {auth.kind} certificate "
                           f"{auth.cert}: {exc}") from exc
        return ctx

    async def cacerts(self, url: str) -> tuple[x509.Certificate, ...]:
        """GET {url}/cacerts: the EST CA and the certificates above it."""
        body = await self._call("GET", f"{url}/cacerts", ClientAuth("anonymous"), None, "cacerts")
        return parse_certs_only(body, "cacerts")

    async def enroll(
        self, url: str, csr_der: bytes, auth: ClientAuth, *, reenroll: bool
    ) -> tuple[x509.Certificate, ...]:
        """POST the CSR to simpleenroll (or simplereenroll); the certificates of the reply."""
        operation = "simplereenroll" if reenroll else "simpleenroll"
        body = await self._call("POST", f"{url}/{operation}", auth, base64_body(csr_der), operation)
        return parse_certs_only(body, operation)

    async def csrattrs(self, url: str, auth: ClientAuth) -> None:
        """GET {url}/csrattrs as an authenticated client: proves the server accepts our credentials."""
        await self._call("GET", f"{url}/csrattrs", auth, None, "csrattrs", accept_404=True)

    async def _answers_anonymously(self, url: str) -> bool:
        base = url.rsplit("/", 1)[0]
        try:
            answer = await fetch(f"{base}/cacerts", "GET", ssl_context=self.context(ClientAuth("anonymous")),
                                 within=self.timeout, max_body=MAX_REPLY_BYTES)
        except HttpError:
            return False
        return answer.status == 200

    async def _call(self, method: str, url: str, auth: ClientAuth, body: bytes | None, what: str,
                    *, accept_404: bool = False) -> bytes:
        headers = [("Content-Type", "application/pkcs10"), ("Content-Transfer-Encoding", "base64")] if body else []
        if self._basic is not None:
            headers.append(("Authorization", self._basic))
        ctx = self.context(auth)
        try:
            answer = await fetch(url, method, ssl_context=ctx, headers=headers, body=body or b"",
                                 within=self.timeout, max_body=MAX_REPLY_BYTES)
        except HttpError as exc:
            if exc.kind is HttpFailure.UNTRUSTED:
                raise EstRejected("server_untrusted", f"the EST server at {url} presented a certificate we do "
                                  f"not trust ({exc.detail}): cert_issuance.est.trusted_certs must hold the root "
                                  "that signed it, and the URL's host must be a name it carries") from exc
            if exc.kind is HttpFailure.TIMEOUT:
                raise EstUnavailable("timeout", f"the EST server at {url} did not answer within "
                                     f"{self.timeout:g}s") from exc
            if exc.kind is HttpFailure.TOO_LARGE:
                raise EstReplyInvalid("reply_too_large", f"the EST {what} reply is over {MAX_REPLY_BYTES} "
                                      "bytes") from exc
            alert = _client_cert_alert(exc)
            if alert is None and auth.cert is not None and await self._answers_anonymously(url):
                # TLS 1.3 servers check the client certificate after the handshake: the alert is lost and
                # the client only sees the connection close. Reachable without it means: it is ours.
                alert = "the connection was closed after our certificate, while the server answers without one"
            if alert is not None and auth.cert is not None:
                raise EstRejected("client_cert_refused", f"the EST server at {url} refused our {auth.kind} "
                                  f"certificate {auth.cert} in the TLS handshake ({alert}): it must be issued "
                                  "by a CA the EST server trusts, and be inside its dates") from exc
            raise EstUnavailable("unreachable", f"cannot reach the EST server at {url}: {_describe(exc)}") from exc
        status, raw, retry_after = answer.status, answer.body, answer.header("Retry-After")
        if status == 200 or (status in (204, 404) and accept_404):
            return raw
        reason, message = _refusal(raw)
        if status == 202:
            raise EstUnavailable("pending", f"the EST server at {url} accepted the {what} request for manual "
                                 f"approval (Retry-After {retry_after or '?'}); the gateway asks again later")
        if status in (401, 403):
            raise EstRejected(reason or "auth_refused", f"the EST server at {url} refused our {auth.kind} "
                              f"authentication for {what} ({status}): {message}")
        if status == 404:
            raise EstRejected("not_found", f"no EST endpoint at {url} (404): check cert_issuance.est.urls.default "
                              "(it ends in /.well-known/est, or /.well-known/est/LABEL)")
        if 400 <= status < 500:
            raise EstRejected(reason or "bad_request", f"the EST server at {url} refused the {what} request "
                              f"({status}): {message}")
        raise EstUnavailable(reason or "server_error", f"the EST server at {url} answered {what} with {status}: "
                             f"{message}")


def _refusal(raw: bytes) -> tuple[str | None, str]:
    text = raw[:2000].decode("utf-8", "replace").strip()
    match = _REASON.match(text)
    if match:
        return match[1], match[2].strip()
    return None, text or "(no explanation)"


def _client_cert_alert(exc: BaseException) -> str | None:
    """The TLS alert text if the server's TLS layer turned down our certificate, else None."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 5:
        seen.append(current)
        current = current.__cause__ or getattr(current, "os_error", None) or current.__context__
    text = " ".join(str(e).lower().replace("_", " ") for e in seen)
    return next((alert for alert in _CLIENT_CERT_ALERTS if alert in text), None)


def _describe(exc: HttpError) -> str:
    if exc.kind is HttpFailure.REFUSED:
        return "connection refused (nothing listens there: EST server down?)"
    return exc.detail
