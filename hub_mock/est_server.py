"""The EST server (RFC 7030) of hub-mock: the PKI provider's role, on its own HTTPS port.

    GET  /.well-known/est[/LABEL]/cacerts          PKCS#7 certs-only: the EST CA and its root
    POST /.well-known/est[/LABEL]/simpleenroll     PKCS#10 in (base64), PKCS#7 certs-only out (base64)
    POST /.well-known/est[/LABEL]/simplereenroll   the same, renewing the presented certificate
    GET  /.well-known/est[/LABEL]/csrattrs         204 once the client is authenticated (no attributes)

LABEL picks the profile: none for identity certs, `edge-ca` for Edge CA certs. Clients authenticate
with a TLS client certificate (from a bootstrap CA, or one this EST CA issued) and, when hub.toml sets
`[est] username/password`, HTTP Basic as well. Fault switches (down, blackhole, error, latency) and
the list of issued certificates are on the admin port under /admin/est; /admin/est/misbehave makes
the server answer with garbage or with a certificate for another key (bad-input drills).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta

from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.errors import PKIError
from gateway.pki import CA, load_certs
from gateway.pki.keys import generate_key
from hub_mock.errors import Invalid
from hub_mock.est_ca import EstCA
from hub_mock.est_config import MAX_LIFETIME, MIN_LIFETIME, EstServerConfig
from hub_mock.est_policy import LABELS, ClientKind, EstClient, Profile, common_name, decide_enrollment
from hub_mock.faults import FaultSwitch, fault_middleware
from hub_mock.listener import SwitchableListener
from hub_mock.wire import json_body, json_object, utc_iso

log = logging.getLogger("hub_mock.est")

# garbage: 200 with a body that is not PKCS#7; wrong_key: a certificate for a key the client never sent.
MISBEHAVIOURS = ("garbage", "wrong_key")
PKCS7_TYPE = "application/pkcs7-mime"
PKCS10_TYPE = "application/pkcs10"
# A CSR is a few hundred bytes; 64 KiB leaves room for RSA-4096 and odd attributes, not for abuse.
MAX_CSR_BYTES = 64 * 1024


class EstService:
    """What the EST app and its admin routes share."""

    def __init__(self, config: EstServerConfig, listener: SwitchableListener,
                 clock: Callable[[], datetime]) -> None:
        self.config = config
        self.ca = EstCA(CA.load(config.ca_cert, config.ca_key))
        self.listener = listener
        self.faults = FaultSwitch(listener)
        self.clock = clock
        self.identity_lifetime = config.identity_lifetime
        self.edge_ca_lifetime = config.edge_ca_lifetime
        # A misbehaving PKI provider, for the gateway's bad-input tests: None, or one of MISBEHAVIOURS.
        self.misbehave: str | None = None

    def profile(self, name: str) -> Profile:
        if name == "edge-ca":
            return Profile(name, True, self.edge_ca_lifetime)
        return Profile(name, False, self.identity_lifetime)


_EST: web.AppKey[EstService] = web.AppKey("est", EstService)


def build_est_context(config: EstServerConfig, cert_path: str, key_path: str) -> ssl.SSLContext:
    """TLS 1.2+, the hub's server certificate; a client certificate is asked for, and must chain to a
    bootstrap CA or the EST CA when one is sent (Basic-only clients send none)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_OPTIONAL
    try:
        ctx.load_cert_chain(cert_path, key_path)
        for path in (*config.bootstrap_cas, config.ca_cert, config.root):
            ctx.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise PKIError(f"cannot set up the EST server's TLS: {exc}") from exc
    return ctx


def _pkcs7_response(certs: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> web.Response:
    der = pkcs7.serialize_certificates(list(certs), Encoding.DER)
    body = base64.encodebytes(der)
    return web.Response(body=body, headers={"Content-Type": f"{PKCS7_TYPE}; smime-type=certs-only",
                                            "Content-Transfer-Encoding": "base64"})


def _refuse(status: int, reason: str, message: str, *, basic: bool = False) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="hub-mock EST"'} if basic else {}
    return web.Response(status=status, text=f"{reason}: {message}\n", headers=headers)


def _label_profile(request: web.Request) -> str | None:
    return LABELS.get(request.match_info.get("label", ""))


def _client(request: web.Request, est: EstService) -> EstClient | web.Response:
    """Who is asking, or the refusal to send."""
    config = est.config
    if config.username is not None:
        given = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{config.username}:{config.password}".encode()).decode()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return _refuse(401, "basic_auth_required", "send the EST username and password (HTTP Basic)", basic=True)
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der:
        cert = x509.load_der_x509_certificate(der)
        name = common_name(cert.subject) or ""
        kind = ClientKind.IDENTITY if est.ca.issued_here(cert, est.clock()) else ClientKind.BOOTSTRAP
        return EstClient(kind, name, cert.subject)
    if config.username is not None:
        return EstClient(ClientKind.BASIC, config.username, None)
    return _refuse(401, "client_certificate_required",
                   "present a bootstrap certificate or an identity certificate this EST server issued")


async def _cacerts(request: web.Request) -> web.Response:
    if _label_profile(request) is None:
        return _refuse(404, "unknown_label", f"no EST profile {request.match_info.get('label')!r}; use none or edge-ca")
    return _pkcs7_response(request.app[_EST].ca.cacerts)


async def _csrattrs(request: web.Request) -> web.Response:
    client = _client(request, request.app[_EST])
    if isinstance(client, web.Response):
        return client
    return web.Response(status=204)


def _read_csr(body: bytes) -> x509.CertificateSigningRequest:
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        der = body
    try:
        return x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise Invalid(f"the body is not a base64 PKCS#10 CSR: {exc}", "bad_csr") from exc


def _enroll(operation: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        est = request.app[_EST]
        profile_name = _label_profile(request)
        if profile_name is None:
            return _refuse(404, "unknown_label", f"no EST profile {request.match_info.get('label')!r}")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != PKCS10_TYPE:
            return _refuse(415, "wrong_content_type", f"send the CSR as {PKCS10_TYPE}, not {content_type or 'nothing'}")
        client = _client(request, est)
        if isinstance(client, web.Response):
            log.warning("EST %s refused: %s", operation, client.text)
            return client
        body = await request.content.read(MAX_CSR_BYTES + 1)
        if len(body) > MAX_CSR_BYTES:
            return _refuse(413, "csr_too_large", f"a CSR is at most {MAX_CSR_BYTES} bytes")
        try:
            csr = _read_csr(body)
        except Invalid as exc:
            return _refuse(400, exc.reason, exc.message)
        profile = est.profile(profile_name)
        decision = decide_enrollment(csr, client, profile, reenroll=operation == "simplereenroll")
        if not decision.ok:
            log.warning("EST %s refused for %s:%s: %s %s", operation, client.kind.value, client.name,
                        decision.reason, decision.message)
            return _refuse(400 if decision.reason != "reenroll_needs_identity" else 403, decision.reason,
                           decision.message)
        if est.misbehave == "garbage":
            return web.Response(body=base64.encodebytes(b"this is not a PKCS#7 structure"),
                                headers={"Content-Type": f"{PKCS7_TYPE}; smime-type=certs-only",
                                         "Content-Transfer-Encoding": "base64"})
        if est.misbehave == "wrong_key":
            other = generate_key()
            csr = x509.CertificateSigningRequestBuilder().subject_name(csr.subject).sign(other, hashes.SHA256())
        cert = est.ca.issue(csr, profile, client, operation, est.clock())
        log.info("EST %s: issued %s (%s) to %s:%s until %s", operation, cert.subject.rfc4514_string(), profile.name,
                 client.kind.value, client.name, utc_iso(cert.not_valid_after_utc))
        return _pkcs7_response([cert, *(c for c in est.ca.cacerts if c.issuer != c.subject)])

    return handler


def build_est_app(est: EstService) -> web.Application:
    """The EST app (TLS is the listener's business); fault switches act before it."""
    app = web.Application(middlewares=[fault_middleware(est.faults)], client_max_size=MAX_CSR_BYTES)
    app[_EST] = est
    for prefix in ("/.well-known/est", "/.well-known/est/{label}"):
        app.router.add_get(f"{prefix}/cacerts", _cacerts)
        app.router.add_get(f"{prefix}/csrattrs", _csrattrs)
        app.router.add_post(f"{prefix}/simpleenroll", _enroll("simpleenroll"))
        app.router.add_post(f"{prefix}/simplereenroll", _enroll("simplereenroll"))
    return app


# -- admin view --------------------------------------------------------------------------------------


def _admin_view(est: EstService) -> dict[str, object]:
    return {
        "port": est.listener.port,
        "faults": est.faults.current.to_json(),
        "policy": {"identity_lifetime": est.identity_lifetime.total_seconds(),
                   "edge_ca_lifetime": est.edge_ca_lifetime.total_seconds(),
                   "basic_auth": est.config.username is not None},
        "ca": est.ca.ca.cert.subject.rfc4514_string(),
        "misbehave": est.misbehave,
        "issued": [
            {"serial": f"{i.serial:x}", "profile": i.profile, "subject": i.subject, "client": i.client,
             "operation": i.operation, "not_before": utc_iso(i.not_before), "not_after": utc_iso(i.not_after),
             "issued_at": utc_iso(i.issued_at)}
            for i in est.ca.issued
        ],
    }


def add_est_admin_routes(app: web.Application, est: EstService) -> None:
    """GET /admin/est (policy, faults, issued), POST /admin/est/faults, POST /admin/est/policy."""
    async def view(request: web.Request) -> web.Response:
        return web.json_response(_admin_view(est))

    async def set_fault(request: web.Request) -> web.Response:
        body = json_object(await json_body(request))
        action, value = body.get("action"), body.get("value")
        number = isinstance(value, int) and not isinstance(value, bool)
        if not isinstance(action, str) or not (value is None or number):
            raise Invalid('expected {"action": "down|up|blackhole|error|latency|clear", "value": N or null}')
        faults = await est.faults.apply(action, value)
        return web.json_response(faults.to_json())

    async def set_policy(request: web.Request) -> web.Response:
        body = json_object(await json_body(request))
        for key in ("identity_lifetime", "edge_ca_lifetime"):
            if key not in body:
                continue
            value = body[key]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise Invalid(f"{key} must be a number of seconds")
            lifetime = timedelta(seconds=value)
            if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
                raise Invalid(f"{key} must be between 5 s and 3650 days")
            setattr(est, key, lifetime)
        log.warning("EST policy now identity %ss, Edge CA %ss", est.identity_lifetime.total_seconds(),
                    est.edge_ca_lifetime.total_seconds())
        return web.json_response(_admin_view(est))

    app.router.add_get("/admin/est", view)
    app.router.add_post("/admin/est/faults", set_fault)
    app.router.add_post("/admin/est/policy", set_policy)

    async def set_misbehave(request: web.Request) -> web.Response:
        mode = json_object(await json_body(request)).get("mode")
        if mode is not None and mode not in MISBEHAVIOURS:
            raise Invalid(f"mode must be null or one of {', '.join(MISBEHAVIOURS)}")
        est.misbehave = mode
        log.warning("EST misbehaviour now %s", mode or "off")
        return web.json_response(_admin_view(est))

    app.router.add_post("/admin/est/misbehave", set_misbehave)


def est_root_certs(config: EstServerConfig) -> list[x509.Certificate]:
    """The EST CA chain, for the hub API's trust store (gateways authenticate with EST identities)."""
    return load_certs(config.ca_cert)
