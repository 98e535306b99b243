"""A certificate and its key on disk, replaced without ever losing a usable pair.

`install` first copies the current pair to `*.prev`, then writes the new key (0600) and the new cert,
each atomically. A crash between the two leaves a mismatched pair: `load` sees it and brings the
previous pair back. The previous pair stays until `confirm` (the new one has worked once); `rollback`
restores it if the new one does not work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gateway.errors import PKIError
from gateway.pki import PrivateKey, cert_pem, key_matches_cert, load_certs, load_private_key, write_file_atomic
from gateway.pki.keys import private_key_pem, write_private_key

log = logging.getLogger("edgegate.est")


@dataclass(frozen=True, slots=True)
class CertKeyPair:
    chain: tuple[x509.Certificate, ...]  # leaf first
    key: PrivateKey

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _read(cert: Path, key: Path) -> CertKeyPair | None:
    if not cert.exists() or not key.exists():
        return None
    try:
        chain = tuple(load_certs(cert))
        private = load_private_key(key)
    except PKIError as exc:
        log.warning("cannot use %s / %s: %s", cert, key, exc)
        return None
    if not key_matches_cert(private, chain[0].public_key()):
        log.warning("%s is not the key of %s", key, cert)
        return None
    return CertKeyPair(chain, private)


class PairStore:
    """The files of one EST-issued certificate: `cert` (chain, leaf first) and `key`."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.prev_cert = cert.with_name(cert.name + ".prev")
        self.prev_key = key.with_name(key.name + ".prev")

    @property
    def pending(self) -> bool:
        """True while a previous pair is kept because the current one has not worked yet."""
        return self.prev_cert.exists() and self.prev_key.exists()

    def load(self) -> CertKeyPair | None:
        """The current pair; the previous one (restored) when the current is broken; None when neither."""
        current = _read(self.cert, self.key)
        if current is not None:
            return current
        previous = _read(self.prev_cert, self.prev_key)
        if previous is not None:
            log.warning("restoring the previous certificate %s: the current pair is missing or broken", self.cert)
            self._write(self.cert, self.key, previous)
            self._drop_previous()
        return previous

    def install(self, chain: tuple[x509.Certificate, ...], key: PrivateKey) -> CertKeyPair:
        """Make `chain` + `key` current, keeping the current pair as the previous one."""
        current = _read(self.cert, self.key)
        if current is not None:
            self._write(self.prev_cert, self.prev_key, current)
        pair = CertKeyPair(chain, key)
        self._write(self.cert, self.key, pair)
        return pair

    def confirm(self) -> None:
        """The current pair worked: the previous one is no longer needed."""
        self._drop_previous()

    def rollback(self) -> CertKeyPair | None:
        """Bring the previous pair back (the new one did not work); None when there is none."""
        previous = _read(self.prev_cert, self.prev_key)
        if previous is not None:
            self._write(self.cert, self.key, previous)
            self._drop_previous()
        return previous

    @staticmethod
    def _write(cert: Path, key: Path, pair: CertKeyPair) -> None:
        write_private_key(key, private_key_pem(pair.key))
        write_file_atomic(cert, cert_pem(*pair.chain))

    def _drop_previous(self) -> None:
        self.prev_cert.unlink(missing_ok=True)
        self.prev_key.unlink(missing_ok=True)
