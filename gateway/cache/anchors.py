"""The trust anchors of CA-authenticated devices: the trust bundle plus the CAs registered in the hub."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from cryptography import x509

from gateway.cache.records import RegisteredCA
from gateway.records import TrustAnchors

log = logging.getLogger("edgegate.cache")


def build_anchors(trust_bundle: Sequence[x509.Certificate], cas: Iterable[RegisteredCA]) -> TrustAnchors:
    """Every bundle cert and every registered CA, root or intermediate, is a trust anchor.

    IoT Hub's semantics: a verified CA certificate, whether a root or an intermediate, vouches for the
    devices whose chain reaches it; the certificates above a registered intermediate are never needed.
    cryptography's verifier ends a path at any certificate of its store, so anchors are all "roots".

    A registered CA that does not parse is left out with a warning: one bad entry must not cost the
    other devices their trust anchors.
    """
    roots = list(trust_bundle)
    for ca in cas:
        try:
            certs = x509.load_pem_x509_certificates(ca.pem.encode())
        except ValueError as exc:
            log.warning("registered CA %s (thumbprint %s) is not a PEM certificate, ignored: %s",
                        ca.name, ca.thumbprint, exc)
            continue
        roots.extend(cert for cert in certs if cert not in roots)
    return TrustAnchors(roots=tuple(roots))
