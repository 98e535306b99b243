"""Auth decision latency with 100,000 cached devices: authenticate() on plain data, in process."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from gateway.auth.decision import AuthPolicy, ConnectClaim, authenticate
from gateway.pki import CA, self_signed_device_cert, thumbprint_sha1, thumbprint_sha256
from gateway.records import AuthType, DeviceRecord, PeerIdentity, TrustAnchors


def _p99(samples: list[float]) -> float:
    samples.sort()
    return samples[int(len(samples) * 0.99) - 1]


def auth_p99_ms(devices: int = 100_000, rounds: int = 5_000) -> dict[str, float]:
    """p99 in ms for a thumbprint device and for a CA device (chain verified), among `devices` records."""
    now = datetime.now(UTC)
    root = CA.create_root("Bench Device Root")
    inter = root.create_child_ca("Bench Device Intermediate")
    ss = self_signed_device_cert("ss-bench")
    ca_dev = inter.issue_device_cert("ca-bench")
    records = {f"dev-{i:06d}": DeviceRecord(f"dev-{i:06d}", True, AuthType.SELF_SIGNED, "gw", f"{i:064x}")
               for i in range(devices)}
    records["ss-bench"] = DeviceRecord("ss-bench", True, AuthType.SELF_SIGNED, "gw", ss.thumbprint_sha256)
    records["ca-bench"] = DeviceRecord("ca-bench", True, AuthType.CERTIFICATE_AUTHORITY, "gw")
    policy = AuthPolicy("gw", TrustAnchors(roots=(root.cert,)), timedelta(minutes=5))
    out = {}
    for name, issued, chain in (("thumbprint", ss, (ss.cert,)), ("ca_chain", ca_dev, (ca_dev.cert, inter.cert))):
        peer = PeerIdentity(chain, thumbprint_sha256(issued.cert), thumbprint_sha1(issued.cert))
        claim = ConnectClaim(issued.cert.subject.rfc4514_string().removeprefix("CN="))
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            decision = authenticate(peer, claim, records.get(claim.client_id), policy, now)
            samples.append((time.perf_counter() - start) * 1000)
            assert decision.ok, decision.message
        out[name] = _p99(samples)
    return out
