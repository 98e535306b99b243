"""Why a device was refused: one enum, each reason with its CONNACK code, a sentence and a counter."""

from __future__ import annotations

import enum

from gateway.mqtt.packets import ConnackCode


class Reason(enum.Enum):
    """Machine-readable reason codes (the `reason=` of the rejection log line)."""

    OK = "ok"
    CLIENT_ID_INVALID = "client_id_invalid"
    USERNAME_INVALID = "username_invalid"
    USERNAME_MISMATCH = "username_mismatch"
    NO_CLIENT_CERT = "no_client_cert"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_DISABLED = "device_disabled"
    OUT_OF_SCOPE = "out_of_scope"
    CACHE_TOO_OLD = "cache_too_old"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    CERT_EXPIRED = "cert_expired"
    THUMBPRINT_MISMATCH = "thumbprint_mismatch"
    NO_THUMBPRINT_REGISTERED = "no_thumbprint_registered"
    CN_MISMATCH = "cn_mismatch"
    LEAF_IS_CA = "leaf_is_ca"
    EKU_NOT_CLIENT_AUTH = "eku_not_client_auth"
    ISSUER_NOT_CA = "issuer_not_ca"
    PATH_LENGTH_EXCEEDED = "path_length_exceeded"
    CHAIN_EXPIRED = "chain_expired"
    CHAIN_NOT_YET_VALID = "chain_not_yet_valid"
    CHAIN_INCOMPLETE = "chain_incomplete"
    CHAIN_UNKNOWN_CA = "chain_unknown_ca"
    CHAIN_UNTRUSTED = "chain_untrusted"
    WEAK_SIGNATURE = "weak_signature_algorithm"
    WEAK_KEY = "weak_key"
    UNKNOWN_CRITICAL_EXTENSION = "unknown_critical_extension"
    CHAIN_TOO_DEEP = "chain_too_deep"
    CHAIN_INVALID = "chain_invalid"
    NO_TRUSTED_CA = "no_trusted_ca"
    WILL_TOPIC_DENIED = "will_topic_denied"

    @property
    def connack_code(self) -> int:
        return _CONNACK.get(self, ConnackCode.NOT_AUTHORIZED)

    @property
    def sentence(self) -> str:
        """The general human explanation; decisions add the specifics in their message."""
        return _SENTENCES[self]

    @property
    def counter(self) -> str:
        return f"edgegate_auth_rejected_total{{reason={self.value}}}"


_CONNACK: dict[Reason, ConnackCode] = {
    Reason.OK: ConnackCode.ACCEPTED,
    Reason.CLIENT_ID_INVALID: ConnackCode.IDENTIFIER_REJECTED,
    # The gateway cannot vouch for anyone until it hears from the hub again: "try later", not "never".
    Reason.CACHE_TOO_OLD: ConnackCode.SERVER_UNAVAILABLE,
}

_SENTENCES: dict[Reason, str] = {
    Reason.OK: "device authenticated",
    Reason.CLIENT_ID_INVALID: "the client id is not a valid device id",
    Reason.USERNAME_INVALID: "the username is neither empty, the device id, nor '{hub}/{deviceId}/?api-version=...'",
    Reason.USERNAME_MISMATCH: "the username names a different device than the client id",
    Reason.NO_CLIENT_CERT: "the device sent no client certificate",
    Reason.UNKNOWN_DEVICE: "the device is not in the gateway's cache of the hub registry",
    Reason.DEVICE_DISABLED: "the device is disabled in the hub registry",
    Reason.OUT_OF_SCOPE: "the device is not a child of this gateway (device scope)",
    Reason.CACHE_TOO_OLD: "the hub has been unreachable longer than offline_trust allows",
    Reason.CERT_NOT_YET_VALID: "the device certificate is not valid yet (check the device's and gateway's clocks)",
    Reason.CERT_EXPIRED: "the device certificate has expired",
    Reason.THUMBPRINT_MISMATCH: "the certificate thumbprint matches neither registered thumbprint",
    Reason.NO_THUMBPRINT_REGISTERED: "the device is registered for thumbprint auth but has no thumbprint",
    Reason.CN_MISMATCH: "the certificate CN does not equal the device id (CN is case-sensitive)",
    Reason.LEAF_IS_CA: "the device certificate is a CA certificate (basicConstraints CA:TRUE)",
    Reason.EKU_NOT_CLIENT_AUTH: "the certificate's extended key usage does not allow client authentication",
    Reason.ISSUER_NOT_CA: "an issuer in the chain is not a CA (basicConstraints CA:FALSE or missing)",
    Reason.PATH_LENGTH_EXCEEDED: "the chain violates an issuer's path length constraint",
    Reason.CHAIN_EXPIRED: "a certificate in the chain has expired",
    Reason.CHAIN_NOT_YET_VALID: "a certificate in the chain is not valid yet",
    Reason.CHAIN_INCOMPLETE: "the device sent no intermediate certificates and its issuer is not a registered CA "
                             "(missing intermediate)",
    Reason.CHAIN_UNKNOWN_CA: "the chain ends at a CA that is not registered in the hub (unknown CA)",
    Reason.CHAIN_UNTRUSTED: "a signature in the chain does not verify",
    Reason.WEAK_SIGNATURE: "a certificate in the chain is signed with a weak algorithm (MD5 or SHA-1); "
                           "re-issue it with SHA-256",
    Reason.WEAK_KEY: "a certificate in the chain has a key that is too weak; re-issue it with ECDSA P-256 or "
                     "RSA 2048 bits or more",
    Reason.UNKNOWN_CRITICAL_EXTENSION: "a certificate in the chain has a critical extension the gateway does not "
                                       "understand",
    Reason.CHAIN_TOO_DEEP: "no path to a registered CA within the longest chain the gateway builds",
    Reason.CHAIN_INVALID: "the certificate chain is invalid (the gateway's debug log has the details)",
    Reason.NO_TRUSTED_CA: "no CA is registered or trusted for CA-signed devices",
    Reason.WILL_TOPIC_DENIED: "the will message is not addressed to the device's own telemetry topic",
}

# cryptography's verdict codes (gateway.pki.chain) to ours.
CHAIN_REASONS: dict[str, Reason] = {
    "issuer_not_ca": Reason.ISSUER_NOT_CA,
    "path_length_exceeded": Reason.PATH_LENGTH_EXCEEDED,
    "eku_not_client_auth": Reason.EKU_NOT_CLIENT_AUTH,
    "eku_mismatch": Reason.EKU_NOT_CLIENT_AUTH,
    "not_yet_valid": Reason.CHAIN_NOT_YET_VALID,
    "expired_or_not_yet_valid": Reason.CHAIN_EXPIRED,
    "expired": Reason.CHAIN_EXPIRED,
    "chain_untrusted": Reason.CHAIN_UNTRUSTED,
    "chain_incomplete": Reason.CHAIN_INCOMPLETE,
    "no_trust_anchor": Reason.NO_TRUSTED_CA,
    "weak_signature_algorithm": Reason.WEAK_SIGNATURE,
    "weak_key": Reason.WEAK_KEY,
    "unknown_critical_extension": Reason.UNKNOWN_CRITICAL_EXTENSION,
    "chain_too_deep": Reason.CHAIN_TOO_DEEP,
}
