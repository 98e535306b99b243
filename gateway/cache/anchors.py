"""The trust anchors of CA-authenticated devices: the trust bundle plus the CAs registered in the hub."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from cryptography import x509

from gateway.cache.records import RegisteredCA
from gateway.pki import is_self_signed
from gateway.records import TrustAnchors

log = logging.getLogger("edgegate.cache")


def build_anchors(trust_bundle: Sequence[x509.Certificate], cas: Iterable[RegisteredCA]) -> TrustAnchors:
    """Bundle certs and self-signed registered CAs are roots; other registered CAs are intermediates.

    A registered CA that does not parse is left out with a warning: one bad entry must not cost the
    other devices their trust anchors.
    """
    roots = list(trust_bundle)
    intermediates: list[x509.Certificate] = []
    for ca in cas:
        try:
            certs = x509.load_pem_x509_certificates(ca.pem.encode())
        except ValueError as exc:
            log.warning("registered CA %s (thumbprint %s) is not a PEM certificate, ignored: %s",
                        ca.name, ca.thumbprint, exc)
            continue
        for cert in certs:
            target = roots if is_self_signed(cert) else intermediates
            if cert not in target:
                target.append(cert)
    return TrustAnchors(roots=tuple(roots), intermediates=tuple(intermediates))
