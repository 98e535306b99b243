"""One set of certificates for every broker in a run: ECDSA P-256, the seed's chain for the server,
and CA-signed device certificates (CN = device id) that all three brokers can verify."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from gateway.pki import CA

HOSTNAME = "edgegateway.local"


@dataclass
class BenchPKI:
    directory: Path
    root: CA
    edge_ca: CA
    device_ca: CA

    @property
    def root_path(self) -> Path:
        return self.directory / "root.pem"

    @property
    def server_chain(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def edge_ca_chain(self) -> Path:
        return self.directory / "edge-ca.pem"

    @property
    def edge_ca_key(self) -> Path:
        return self.directory / "edge-ca.key"

    @classmethod
    def create(cls, directory: Path) -> BenchPKI:
        if directory.exists():
            shutil.rmtree(directory)  # device certs from an earlier run chain to an earlier root
        directory.mkdir(parents=True)
        root = CA.create_root("Bench Root")
        inter = root.create_child_ca("Bench Intermediate", path_length=1)
        edge = inter.create_child_ca("Bench Edge CA", path_length=0)
        device_ca = root.create_child_ca("Bench Device CA", path_length=0)
        pki = cls(directory, root, edge, device_ca)
        root.cert_pem.write_to_path(pki.root_path)
        server = edge.issue_server_cert(HOSTNAME, "127.0.0.1")
        server.fullchain_pem().write_to_path(pki.server_chain)
        server.private_key_pem.write_to_path(pki.server_key, private=True)
        edge.chain_pem().write_to_path(pki.edge_ca_chain)
        edge.private_key_pem.write_to_path(pki.edge_ca_key, private=True)
        return pki

    def device_files(self, device_id: str) -> tuple[Path, Path]:
        """cert (leaf + device CA) and key for `device_id`, made once and reused."""
        cert, key = self.directory / "devices" / f"{device_id}.pem", self.directory / "devices" / f"{device_id}.key"
        if not cert.exists():
            issued = self.device_ca.issue_device_cert(device_id)
            issued.fullchain_pem().write_to_path(cert)
            issued.private_key_pem.write_to_path(key, private=True)
        return cert, key
