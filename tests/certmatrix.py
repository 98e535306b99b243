"""The certificate matrix: one row per way a child device can present itself, and what must happen.

Shared by the pure decision test (tests/unit/test_decision.py) and the real-TLS test
(tests/hostile/test_cert_matrix.py), so both judge exactly the same certificates. This table is the
list of what the gateway rejects and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier

from gateway.auth.reasons import Reason
from gateway.pki import CA, IssuedCert, self_signed_device_cert
from gateway.records import AuthType, DeviceRecord, TrustAnchors

GATEWAY_ID = "edge-gw-1"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Row:
    name: str
    client_id: str
    cert: IssuedCert | None  # None: no client certificate at all
    records: tuple[DeviceRecord, ...]  # what the gateway's cache holds
    expected: Reason
    send_intermediates: bool = True  # the client sends leaf + intermediates (else the leaf alone)
    send_root: bool = False  # the client sends its root too
    legacy_crypto: bool = False  # the client must lower OpenSSL's security level to even load its cert
    username: str | None = None
    note: str = ""

    @property
    def client_chain(self) -> tuple[x509.Certificate, ...]:
        if self.cert is None:
            return ()
        if not self.send_intermediates:
            return (self.cert.cert,)
        extra = [c for c in self.cert.chain if self.send_root or c.issuer != c.subject]
        return (self.cert.cert, *extra)


@dataclass
class Matrix:
    root: CA  # the device CA root registered in the hub
    anchors: TrustAnchors
    rows: list[Row] = field(default_factory=list)

    def by_name(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def ss_record(device_id: str, primary: str | None, secondary: str | None = None, *,
              enabled: bool = True, parent: str | None = GATEWAY_ID) -> DeviceRecord:
    return DeviceRecord(device_id, enabled, AuthType.SELF_SIGNED, parent, primary, secondary)


def ca_record(device_id: str, *, enabled: bool = True, parent: str | None = GATEWAY_ID) -> DeviceRecord:
    return DeviceRecord(device_id, enabled, AuthType.CERTIFICATE_AUTHORITY, parent)


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _der_value(der: bytes) -> bytes:
    """The contents of the DER element at the start of `der`."""
    n, i = der[1], 2
    if n & 0x80:
        k = n & 0x7F
        n, i = int.from_bytes(der[2:2 + k], "big"), 2 + k
    return der[i:i + n]


_ECDSA_SHA256 = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040302")))
_ECDSA_SHA1 = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d0401")))


def resigned_with_sha1(issued: IssuedCert, issuer: CA) -> IssuedCert:
    """The same certificate signed with ECDSA-SHA1. cryptography refuses to sign with SHA-1 (as it should),
    so the to-be-signed part is re-signed by hand: the weak certificate a legacy PKI still hands out."""
    tbs = _der_value(_der_value(issued.cert.public_bytes(serialization.Encoding.DER)))
    assert _ECDSA_SHA256 in tbs
    tbs = _tlv(0x30, tbs.replace(_ECDSA_SHA256, _ECDSA_SHA1, 1))
    key = issuer.private_key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA1()))
    cert = x509.load_der_x509_certificate(_tlv(0x30, tbs + _ECDSA_SHA1 + _tlv(0x03, b"\x00" + signature)))
    return IssuedCert(cert, issued.private_key, issued.chain)


# A private-enterprise OID nobody implements, marked critical: a verifier must refuse the certificate.
UNKNOWN_CRITICAL = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1.1"), b"\x05\x00")


def build(now: datetime = NOW) -> Matrix:
    """Every row, with certificates valid around `now` unless the row is about dates."""
    root = CA.create_root("Device Root CA", path_length=2, now=now - 30 * DAY)
    inter = root.create_child_ca("Device Intermediate CA", path_length=0, now=now - 30 * DAY)
    other_root = CA.create_root("Unknown Root CA", now=now - 30 * DAY)
    other_inter = other_root.create_child_ca("Unknown Intermediate", now=now - 30 * DAY)
    not_a_ca = root.create_child_ca("Leaf Posing As CA", ca_flag=False, now=now - 30 * DAY)
    sub_inter = inter.create_child_ca("Sub Intermediate (violates pathlen 0)", now=now - 30 * DAY)
    old_inter = root.create_child_ca("Expired Intermediate", not_before=now - 400 * DAY,
                                     not_after=now - 10 * DAY)
    # An intermediate registered at the hub on its own: its root is not registered (IoT Hub allows that).
    unregistered_root = CA.create_root("Unregistered Root CA", path_length=1, now=now - 30 * DAY)
    registered_inter = unregistered_root.create_child_ca("Registered Intermediate CA", now=now - 30 * DAY)
    same_name = CA.create_root("Device Root CA", path_length=2, now=now - 30 * DAY)  # regenerated: new key
    same_name_inter = same_name.create_child_ca("Device Intermediate CA", now=now - 30 * DAY)
    deep = root.create_child_ca("Deep 0", path_length=None, now=now - 30 * DAY)
    for level in range(1, 9):
        deep = deep.create_child_ca(f"Deep {level}", path_length=None, now=now - 30 * DAY)
    recent = now - 10 * DAY

    ss = self_signed_device_cert("ss-primary", now=recent)
    ss2 = self_signed_device_cert("ss-secondary", now=recent)
    ss1 = self_signed_device_cert("ss-sha1", now=recent)
    stranger = self_signed_device_cert("ss-stranger", now=recent)
    ss_old = self_signed_device_cert("ss-expired", not_before=now - 400 * DAY, not_after=now - DAY)
    ss_future = self_signed_device_cert("ss-future", not_before=now + 2 * DAY, not_after=now + 400 * DAY)
    other = "0" * 64
    # A thumbprint device's own certificate used as the issuer of another device certificate.
    device_as_issuer = CA(ss.cert, ss.private_key)

    def ca_dev(device_id: str, issuer: CA = inter, **kw: object) -> IssuedCert:
        return issuer.issue_device_cert(device_id, now=recent, **kw)  # type: ignore[arg-type]

    rows = [
        Row("thumbprint primary sha256", "ss-primary", ss, (ss_record("ss-primary", ss.thumbprint_sha256),),
            Reason.OK),
        Row("thumbprint secondary", "ss-secondary", ss2,
            (ss_record("ss-secondary", other, ss2.thumbprint_sha256.upper()),), Reason.OK,
            note="registered in upper case: compared case-insensitively"),
        Row("thumbprint sha1", "ss-sha1", ss1, (ss_record("ss-sha1", ss1.thumbprint_sha1),), Reason.OK),
        Row("iot hub username", "ss-primary", ss, (ss_record("ss-primary", ss.thumbprint_sha256),), Reason.OK,
            username="myhub.azure-devices.net/ss-primary/?api-version=2021-04-12"),
        Row("unregistered self-signed", "ss-stranger", stranger, (ss_record("ss-stranger", other),),
            Reason.THUMBPRINT_MISMATCH),
        Row("unknown device", "ss-nobody", stranger, (), Reason.UNKNOWN_DEVICE),
        Row("self-signed expired", "ss-expired", ss_old, (ss_record("ss-expired", ss_old.thumbprint_sha256),),
            Reason.CERT_EXPIRED),
        Row("self-signed not yet valid", "ss-future", ss_future,
            (ss_record("ss-future", ss_future.thumbprint_sha256),), Reason.CERT_NOT_YET_VALID),
        Row("ca signed, intermediate sent", "ca-good", ca_dev("ca-good"), (ca_record("ca-good"),), Reason.OK),
        Row("ca signed, intermediate missing", "ca-lonely", ca_dev("ca-lonely"), (ca_record("ca-lonely"),),
            Reason.CHAIN_INCOMPLETE, send_intermediates=False),
        Row("cn case mismatch", "TempSensor", ca_dev("TempSensor", common_name="tempsensor"),
            (ca_record("TempSensor"),), Reason.CN_MISMATCH),
        Row("leaf is a ca", "ca-leafca", ca_dev("ca-leafca", is_ca=True), (ca_record("ca-leafca"),),
            Reason.LEAF_IS_CA),
        Row("issuer is not a ca", "ca-badissuer", ca_dev("ca-badissuer", issuer=not_a_ca),
            (ca_record("ca-badissuer"),), Reason.ISSUER_NOT_CA),
        Row("path length violated", "ca-pathlen", ca_dev("ca-pathlen", issuer=sub_inter),
            (ca_record("ca-pathlen"),), Reason.PATH_LENGTH_EXCEEDED),
        Row("ca signed, leaf expired", "ca-expired",
            inter.issue_device_cert("ca-expired", not_before=now - 100 * DAY, not_after=now - DAY),
            (ca_record("ca-expired"),), Reason.CERT_EXPIRED),
        Row("ca signed, leaf not yet valid", "ca-future",
            inter.issue_device_cert("ca-future", not_before=now + DAY, not_after=now + 100 * DAY),
            (ca_record("ca-future"),), Reason.CERT_NOT_YET_VALID),
        Row("expired intermediate", "ca-oldinter",
            old_inter.issue_device_cert("ca-oldinter", not_before=now - 100 * DAY, not_after=now + 100 * DAY),
            (ca_record("ca-oldinter"),), Reason.CHAIN_EXPIRED),
        Row("unknown ca", "ca-unknown", ca_dev("ca-unknown", issuer=other_inter), (ca_record("ca-unknown"),),
            Reason.CHAIN_UNKNOWN_CA),
        Row("unknown ca, its root sent along", "ca-ownroot", ca_dev("ca-ownroot", issuer=other_inter),
            (ca_record("ca-ownroot"),), Reason.CHAIN_UNKNOWN_CA, send_root=True),
        Row("registered intermediate, root not registered", "ca-reginter",
            ca_dev("ca-reginter", issuer=registered_inter), (ca_record("ca-reginter"),), Reason.OK,
            send_intermediates=False, note="IoT Hub: a registered intermediate is a trust anchor"),
        Row("registered intermediate, intermediate sent", "ca-reginter2",
            ca_dev("ca-reginter2", issuer=registered_inter), (ca_record("ca-reginter2"),), Reason.OK),
        Row("same-name ca, other key", "ca-samename", ca_dev("ca-samename", issuer=same_name_inter),
            (ca_record("ca-samename"),), Reason.CHAIN_UNTRUSTED),
        Row("sha-1 signed leaf", "ca-sha1", resigned_with_sha1(ca_dev("ca-sha1"), inter), (ca_record("ca-sha1"),),
            Reason.WEAK_SIGNATURE, legacy_crypto=True),
        Row("unknown critical extension", "ca-critical",
            ca_dev("ca-critical", extra_extensions=[(UNKNOWN_CRITICAL, True)]), (ca_record("ca-critical"),),
            Reason.UNKNOWN_CRITICAL_EXTENSION),
        Row("leaf signed by a thumbprint device's cert", "ca-bydevice",
            ca_dev("ca-bydevice", issuer=device_as_issuer), (ca_record("ca-bydevice"),), Reason.ISSUER_NOT_CA,
            send_root=True, note="sends the other device's (self-signed) certificate along"),
        Row("chain deeper than the gateway builds", "ca-deep", ca_dev("ca-deep", issuer=deep),
            (ca_record("ca-deep"),), Reason.CHAIN_TOO_DEEP),
        Row("eku serverAuth only", "ca-server-eku", ca_dev("ca-server-eku", eku=("serverAuth",)),
            (ca_record("ca-server-eku"),), Reason.EKU_NOT_CLIENT_AUTH),
        Row("disabled device", "ss-primary", ss, (ss_record("ss-primary", ss.thumbprint_sha256, enabled=False),),
            Reason.DEVICE_DISABLED),
        Row("not in this gateway's scope", "ss-primary", ss,
            (ss_record("ss-primary", ss.thumbprint_sha256, parent="other-gateway"),), Reason.OUT_OF_SCOPE),
        Row("no client certificate", "ss-primary", None, (ss_record("ss-primary", ss.thumbprint_sha256),),
            Reason.NO_CLIENT_CERT),
        Row("client id is another device (thumbprint)", "ss-secondary", ss,
            (ss_record("ss-secondary", ss2.thumbprint_sha256),), Reason.THUMBPRINT_MISMATCH,
            note="ss-primary's certificate claiming to be ss-secondary"),
        Row("client id is another device (ca)", "ca-other", ca_dev("ca-good2"), (ca_record("ca-other"),),
            Reason.CN_MISMATCH),
        Row("username names another device", "ss-primary", ss, (ss_record("ss-primary", ss.thumbprint_sha256),),
            Reason.USERNAME_MISMATCH, username="myhub.azure-devices.net/ss-secondary/?api-version=2021-04-12"),
        Row("malformed client id", "bad/id", ss, (), Reason.CLIENT_ID_INVALID),
    ]
    anchors = TrustAnchors(roots=(root.cert, registered_inter.cert))
    return Matrix(root=root, anchors=anchors, rows=rows)
