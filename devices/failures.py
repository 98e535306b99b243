"""Why a TempSensor could not connect, or lost its connection: a reason code and one sentence.

Pure: CONNACK codes, TLS alert names and socket errors go in, an `Explanation` comes out. `fatal`
says that retrying cannot help: a gateway that refuses this device, or one this device must not
trust, stays that way until somebody changes a certificate, the registry or the command line.
"""

from __future__ import annotations

import enum
import errno
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509


class Reason(enum.Enum):
    # The gateway's certificate, as this device judges it (devices/diagnose.py).
    GATEWAY_TRUSTED = "gateway_trusted"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    UNTRUSTED_CHAIN = "untrusted_chain"
    INVALID_CHAIN = "invalid_chain"
    GATEWAY_CERT_EXPIRED = "gateway_cert_expired"
    GATEWAY_CERT_NOT_YET_VALID = "gateway_cert_not_yet_valid"
    NO_GATEWAY_CERT = "no_gateway_cert"
    # This device's certificate, as the gateway judges it (TLS alerts).
    DEVICE_CERT_REJECTED = "device_cert_rejected"
    DEVICE_CERT_EXPIRED = "device_cert_expired"
    DEVICE_CERT_NOT_YET_VALID = "device_cert_not_yet_valid"
    DEVICE_CERT_REVOKED = "device_cert_revoked"
    DEVICE_CERT_MISSING = "device_cert_missing"
    # TLS itself.
    NOT_TLS = "not_tls"
    NO_COMMON_TLS = "no_common_tls"
    TLS_FAILED = "tls_failed"
    # The network.
    CONNECTION_REFUSED = "connection_refused"
    NAME_UNRESOLVED = "name_unresolved"
    UNREACHABLE = "unreachable"
    TIMED_OUT = "timed_out"
    CONNECTION_LOST = "connection_lost"
    NO_CONNACK = "no_connack"
    # CONNACK refusals, MQTT 3.1.1 return codes 1-5 (and anything else a broker sends).
    UNACCEPTABLE_PROTOCOL = "unacceptable_protocol"
    IDENTIFIER_REJECTED = "identifier_rejected"
    SERVER_UNAVAILABLE = "server_unavailable"
    BAD_CREDENTIALS = "bad_credentials"
    NOT_AUTHORIZED = "not_authorized"
    REFUSED = "refused"


# An expired or not-yet-valid gateway certificate is left to retry: the gateway renews its server
# certificate on its own, and a Raspberry Pi's clock is wrong only until NTP answers. So is this
# device's own certificate when this device's clock says it is not valid yet.
FATAL = frozenset({
    Reason.HOSTNAME_MISMATCH, Reason.UNTRUSTED_CHAIN, Reason.INVALID_CHAIN, Reason.NO_GATEWAY_CERT,
    Reason.DEVICE_CERT_REJECTED, Reason.DEVICE_CERT_EXPIRED, Reason.DEVICE_CERT_REVOKED, Reason.DEVICE_CERT_MISSING,
    Reason.NOT_TLS, Reason.NO_COMMON_TLS,
    Reason.UNACCEPTABLE_PROTOCOL, Reason.IDENTIFIER_REJECTED, Reason.BAD_CREDENTIALS, Reason.NOT_AUTHORIZED,
})

REFUSALS = frozenset({
    Reason.UNACCEPTABLE_PROTOCOL, Reason.IDENTIFIER_REJECTED, Reason.SERVER_UNAVAILABLE, Reason.BAD_CREDENTIALS,
    Reason.NOT_AUTHORIZED, Reason.REFUSED,
})


@dataclass(frozen=True, slots=True)
class Explanation:
    reason: Reason
    message: str

    @property
    def fatal(self) -> bool:
        """Retrying cannot fix this."""
        return self.reason in FATAL

    def __str__(self) -> str:
        return self.message


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def own_cert_dates(cert: x509.Certificate, now: datetime) -> Explanation | None:
    """This device's certificate outside its validity by this device's clock: the likeliest reason a
    gateway refuses it, and one a wrong clock (a Raspberry Pi before NTP answers) explains."""
    if now < cert.not_valid_before_utc:
        return Explanation(Reason.DEVICE_CERT_NOT_YET_VALID,
                           f"this device's certificate is valid from {_utc(cert.not_valid_before_utc)} and this "
                           f"device's clock says {_utc(now)}: check the clock here and on the gateway (NTP); "
                           "retrying, as a corrected clock fixes this")
    if now > cert.not_valid_after_utc:
        return Explanation(Reason.DEVICE_CERT_EXPIRED,
                           f"this device's certificate expired on {_utc(cert.not_valid_after_utc)} and this "
                           f"device's clock says {_utc(now)}: issue it a new certificate (or, if the clock is "
                           "wrong, fix the clock)")
    return None


def connack_refusal(code: int, device_id: str, username: str, *, own_cert: x509.Certificate | None = None,
                    now: datetime | None = None) -> Explanation:
    """A refused CONNACK (MQTT 3.1.1 return code) in words; with this device's certificate and clock, a
    refusal its dates explain says so."""
    if code == 5 and own_cert is not None and now is not None:
        dated = own_cert_dates(own_cert, now)
        if dated is not None:
            return Explanation(dated.reason, f"not authorized: {dated.message}")
    if code == 1:
        return Explanation(Reason.UNACCEPTABLE_PROTOCOL,
                           "unacceptable protocol version: the gateway does not speak MQTT 3.1.1")
    if code == 2:
        return Explanation(Reason.IDENTIFIER_REJECTED,
                           f"identifier rejected: the gateway does not accept {device_id!r} as a client id "
                           "(it must be the device id exactly, case included)")
    if code == 3:
        return Explanation(Reason.SERVER_UNAVAILABLE,
                           "server unavailable: the gateway cannot vouch for devices right now "
                           "(it has been cut off from the hub for longer than it trusts its cache)")
    if code == 4:
        return Explanation(Reason.BAD_CREDENTIALS,
                           f"bad username or password: the gateway rejected the username {username!r}")
    if code == 5:
        return Explanation(Reason.NOT_AUTHORIZED,
                           "not authorized: the gateway does not recognise this device's certificate "
                           f"(is {device_id!r} registered as a child of this gateway, with this certificate's "
                           "thumbprint or CA?)")
    return Explanation(Reason.REFUSED, f"the gateway refused the connection with CONNACK code {code}")


_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")

# OpenSSL's names for what went wrong in a handshake the gateway aborted; see `tls_failure`.
_TLS_REASONS: dict[str, tuple[Reason, str]] = {
    "UNKNOWN_CA": (Reason.DEVICE_CERT_REJECTED,
                   "the gateway does not trust the CA that issued this device's certificate (TLS alert unknown_ca); "
                   "send the full chain in --cert, or have the device CA added to the gateway's trust bundle"),
    "BAD_CERTIFICATE": (Reason.DEVICE_CERT_REJECTED,
                        "the gateway rejected this device's certificate (TLS alert bad_certificate)"),
    "UNSUPPORTED_CERTIFICATE": (Reason.DEVICE_CERT_REJECTED,
                                "the gateway cannot use this device's certificate for a client (TLS alert "
                                "unsupported_certificate): it needs extendedKeyUsage clientAuth or none at all"),
    "CERTIFICATE_UNKNOWN": (Reason.DEVICE_CERT_REJECTED,
                            "the gateway rejected this device's certificate (TLS alert certificate_unknown)"),
    "ACCESS_DENIED": (Reason.DEVICE_CERT_REJECTED,
                      "the gateway denied this device access during the TLS handshake (TLS alert access_denied)"),
    "DECRYPT_ERROR": (Reason.DEVICE_CERT_REJECTED,
                      "the gateway could not verify this device's TLS signature (TLS alert decrypt_error)"),
    "CERTIFICATE_EXPIRED": (Reason.DEVICE_CERT_EXPIRED,
                            "the gateway says this device's certificate has expired, or is not valid yet by "
                            "the gateway's clock (TLS alert certificate_expired): check both clocks, and if "
                            "they are right, issue a new certificate"),
    "CERTIFICATE_REVOKED": (Reason.DEVICE_CERT_REVOKED,
                            "the gateway says this device's certificate is revoked (TLS alert certificate_revoked)"),
    "CERTIFICATE_REQUIRED": (Reason.DEVICE_CERT_MISSING,
                             "the gateway requires a client certificate and this device sent none "
                             "(TLS alert certificate_required)"),
    "WRONG_VERSION_NUMBER": (Reason.NOT_TLS,
                             "the gateway did not answer in TLS: is this a plain MQTT port (1883) instead of 8883?"),
    "PROTOCOL_VERSION": (Reason.NO_COMMON_TLS,
                         "the gateway and this device share no TLS version (this device needs TLS 1.2 or newer)"),
    "UNSUPPORTED_PROTOCOL": (Reason.NO_COMMON_TLS,
                             "the gateway and this device share no TLS version (this device needs TLS 1.2 or newer)"),
    "HANDSHAKE_FAILURE": (Reason.NO_COMMON_TLS,
                          "the gateway aborted the TLS handshake (TLS alert handshake_failure): no cipher suite "
                          "or key type in common"),
}


def tls_failure(reason: str | None, text: str) -> Explanation:
    """A failed TLS handshake that was not this device refusing the gateway's certificate.

    `reason` is `ssl.SSLError.reason` (OpenSSL's name, say "TLSV1_ALERT_UNKNOWN_CA"); `text` the
    error's own words, used when the reason is one we cannot explain better.
    """
    name = reason or ""
    for prefix in _ALERT_PREFIXES:
        name = name.removeprefix(prefix)
    if name in _TLS_REASONS:
        why, message = _TLS_REASONS[name]
        return Explanation(why, message)
    return Explanation(Reason.TLS_FAILED, f"the TLS handshake with the gateway failed: {text}")


# What OpenSSL's verify codes mean, for when the gateway's chain cannot be fetched to say more.
_VERIFY_CODES: dict[int, Reason] = {
    62: Reason.HOSTNAME_MISMATCH,  # X509_V_ERR_HOSTNAME_MISMATCH
    64: Reason.HOSTNAME_MISMATCH,  # X509_V_ERR_IP_ADDRESS_MISMATCH
    10: Reason.GATEWAY_CERT_EXPIRED,  # X509_V_ERR_CERT_HAS_EXPIRED
    9: Reason.GATEWAY_CERT_NOT_YET_VALID,  # X509_V_ERR_CERT_NOT_YET_VALID
    2: Reason.UNTRUSTED_CHAIN,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18: Reason.UNTRUSTED_CHAIN,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: Reason.UNTRUSTED_CHAIN,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20: Reason.UNTRUSTED_CHAIN,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: Reason.UNTRUSTED_CHAIN,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
}


def verification_failure(verify_code: int, verify_message: str, hostname: str, detail: str) -> Explanation:
    """This device refused the gateway's certificate, from OpenSSL's verdict alone (`detail` says why
    nothing better is known)."""
    why = _VERIFY_CODES.get(verify_code, Reason.INVALID_CHAIN)
    clock = (": check this device's clock (NTP) and the gateway's"
             if why in (Reason.GATEWAY_CERT_EXPIRED, Reason.GATEWAY_CERT_NOT_YET_VALID) else "")
    return Explanation(why, f"the gateway's certificate failed verification for {hostname}: {verify_message} "
                            f"({detail}){clock}")


def socket_failure(exc: OSError, address: str, port: int, timeout: float) -> Explanation:
    """Dialling failed: no TCP connection, or it broke during the TLS handshake."""
    where = f"{address}:{port}"
    if isinstance(exc, ConnectionResetError):
        return Explanation(Reason.TLS_FAILED, f"{where} reset the connection during the TLS handshake "
                                              "(is it a plain MQTT port, such as 1883, instead of a TLS one?)")
    if isinstance(exc, ConnectionRefusedError):
        return Explanation(Reason.CONNECTION_REFUSED, f"connection refused: nothing listens on {where} "
                                                      "(is the gateway running? is the port right?)")
    if isinstance(exc, socket.gaierror):
        return Explanation(Reason.NAME_UNRESOLVED, f"cannot resolve {address}: {exc.strerror} "
                                                   "(check DNS or /etc/hosts, or pass --connect-address)")
    if isinstance(exc, TimeoutError):
        return Explanation(Reason.TIMED_OUT,
                           f"no answer from {where} within {timeout:g} s (wrong address, a firewall, or the "
                           "gateway is overloaded)")
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return Explanation(Reason.UNREACHABLE, f"{where} is unreachable: {exc.strerror}")
    return Explanation(Reason.UNREACHABLE, f"cannot reach {where}: {exc.strerror or exc}")


def connection_lost(answered: bool, error: OSError | None, paho_words: str) -> Explanation:
    """The connection ended after the handshake. `answered`: a CONNACK had arrived; `error`: the last
    socket error, if any (paho only says the connection was lost)."""
    if isinstance(error, ssl.SSLError) and not answered:
        # With TLS 1.3 the device finishes its handshake before the gateway has checked the device's
        # certificate, so the gateway's verdict arrives as an alert on the first read.
        return tls_failure(error.reason, str(error))
    if not answered:
        why = str(error) if error is not None else "it closed the connection"
        return Explanation(Reason.CONNECTION_LOST, f"the gateway hung up before answering CONNECT: {why}")
    why = str(error) if error is not None else paho_words
    return Explanation(Reason.CONNECTION_LOST, f"connection to the gateway lost: {why}")
