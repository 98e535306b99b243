"""`edgegate certs est-enroll`: one enrollment by hand, written to a directory of its own, with the
gateway's EST configuration (useful to test a PKI provider's endpoint before a gateway depends on it)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import Config
from gateway.config_est import EstAutoRenewConfig
from gateway.errors import PKIError
from gateway.est.keeper import EstKeeper, Slot
from gateway.est.pairstore import CertKeyPair, PairStore
from gateway.metrics import Counters


def manual_enroll(config: Config, out: Path, *, edge_ca: bool, url: str | None, common_name: str | None,
                  force: bool) -> tuple[CertKeyPair, Slot]:
    """simpleenroll once (identity, or Edge CA with `edge_ca`) into out/{identity,edge-ca}.{pem,key}."""
    if config.est is None:
        raise PKIError(f"{config.source} has no [cert_issuance.est]: est-enroll uses its URL and credentials")
    keeper = EstKeeper(config, config.est, lambda: datetime.now(UTC), Counters())
    template = keeper.edge_ca if edge_ca and keeper.edge_ca is not None else keeper.identity
    stem = "edge-ca" if edge_ca else "identity"
    cert, key = out / f"{stem}.pem", out / f"{stem}.key"
    existing = [str(p) for p in (cert, key) if p.exists()]
    if existing and not force:
        raise PKIError(f"will not overwrite {', '.join(existing)}: nothing written (pass --force to replace)")
    name = common_name or (template.common_name if template.ca == edge_ca else f"{template.common_name} Edge CA")
    slot = Slot(f"manual {stem}", (url or template.url).rstrip("/"), name, edge_ca, EstAutoRenewConfig(),
                PairStore(cert, key))
    pair = asyncio.run(keeper.obtain(slot))
    slot.store.confirm()
    return pair, slot
