"""Bad input around EST gets a clear error, and never costs the gateway a usable certificate.

Real processes: hub-mock's EST server (with its admin misbehaviour switch for replies no honest server
sends), `edgegate certs est-enroll` and `edgegate run`.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.est.keeper import EstKeeper
from gateway.metrics import Counters
from gateway.pki import CA, key_matches_cert
from tests.estproc import EstGateway, EstHub, est_config
from tests.gatewayproc import GATEWAY_ID
from tests.hubproc import REPO

pytestmark = pytest.mark.integration


def edgegate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> EstHub:
    running = EstHub.start_est(tmp_path_factory.mktemp("est") / "hub")
    yield running  # type: ignore[misc]
    running.stop()


def enroll(hub: EstHub, tmp: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    config = tmp / "config.toml"
    config.write_text(est_config(hub, tmp, edge_ca=False, **kw))  # type: ignore[arg-type]
    return edgegate("certs", "est-enroll", "-c", str(config), "--out", str(tmp / "out"))


def test_est_enroll_writes_an_identity_and_a_good_control(hub: EstHub, tmp_path: Path) -> None:
    done = enroll(hub, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"CN={GATEWAY_ID} issued by CN=edgegate hub-mock EST CA" in done.stdout
    assert (tmp_path / "out" / "identity.pem").exists()
    assert (tmp_path / "out" / "identity.key").stat().st_mode & 0o077 == 0


def test_an_untrusted_est_server_certificate_is_named(hub: EstHub, tmp_path: Path) -> None:
    done = enroll(hub, tmp_path, trusted=hub.est_root)  # the EST root did not sign the server's certificate
    assert done.returncode == 1
    assert "server_untrusted" in done.stderr
    assert "cert_issuance.est.trusted_certs must hold the root that signed it" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_bootstrap_cert_from_a_ca_the_est_server_does_not_know_is_refused(hub: EstHub, tmp_path: Path) -> None:
    stranger = CA.create_root("Somebody Else's Bootstrap CA").issue_identity_cert(GATEWAY_ID)
    done = enroll(hub, tmp_path, bootstrap=stranger)
    assert done.returncode == 1
    assert "client_cert_refused" in done.stderr or "auth_refused" in done.stderr, done.stderr
    assert "bootstrap" in done.stderr


def test_a_csr_against_the_policy_is_refused_with_the_rule(hub: EstHub, tmp_path: Path) -> None:
    done = enroll(hub, tmp_path, bootstrap=hub.bootstrap_cert("another-gateway"))
    assert done.returncode == 1
    assert "policy_violation" in done.stderr
    assert "must be the authenticated gateway's name 'another-gateway'" in done.stderr


@pytest.mark.parametrize(("mode", "reason", "phrase"), [
    ("garbage", "reply_not_pkcs7", "is not a PKCS#7 certs-only structure"),
    ("wrong_key", "key_mismatch", "no certificate in the reply carries the key we sent in the CSR"),
])
def test_an_unusable_reply_is_refused_and_nothing_is_written(hub: EstHub, tmp_path: Path, mode: str, reason: str,
                                                            phrase: str) -> None:
    hub.admin.call("POST", "/admin/est/misbehave", {"mode": mode})
    try:
        done = enroll(hub, tmp_path)
    finally:
        hub.admin.call("POST", "/admin/est/misbehave", {"mode": None})
    assert done.returncode == 1
    assert reason in done.stderr
    assert phrase in done.stderr
    assert not (tmp_path / "out" / "identity.pem").exists()


def test_edgegate_run_stops_at_first_start_with_the_reason(hub: EstHub, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(est_config(hub, tmp_path, edge_ca=True, trusted=hub.est_root))
    done = edgegate("run", "-c", str(config))
    assert done.returncode == 1
    assert "EST enrollment failed (server_untrusted)" in done.stderr


@pytest.mark.timeout(150)
def test_a_bad_reply_during_renewal_keeps_the_current_pair_and_renewal_resumes(tmp_path: Path) -> None:
    with EstHub.start_est(tmp_path / "hub", identity_lifetime=20) as hub, \
            EstGateway.start_est(tmp_path / "gw", hub, edge_ca=False) as gw:
        gw.wait_synced(30)
        hub.admin.call("POST", "/admin/est/misbehave", {"mode": "garbage"})
        held = (gw.state_dir / "est" / "identity.pem").read_bytes()
        status = gw.wait_est(lambda s: (s["identity"]["last_error"] or {}).get("reason") == "reply_not_pkcs7",
                             timeout=60, what="a refused renewal")
        assert (gw.state_dir / "est" / "identity.pem").read_bytes() == held  # the usable pair is untouched
        assert status["identity"]["renewals"] == 1
        gw.wait_log("EST identity renewal failed (reply_not_pkcs7), keeping the current certificate")
        hub.admin.call("POST", "/admin/est/misbehave", {"mode": None})
        gw.wait_est(lambda s: s["identity"]["renewals"] >= 2 and not s["identity"]["waiting_to_confirm"],
                    timeout=60, what="renewal after the server behaves again")
        assert (gw.state_dir / "est" / "identity.pem").read_bytes() != held
        assert not (gw.state_dir / "est" / "identity.pem.prev").exists()
        time.sleep(0)


def check(config: Path) -> dict[str, tuple[str, str]]:
    done = edgegate("check", "-c", str(config), "--json")
    return {r["check"]: (r["status"], r["detail"]) for r in json.loads(done.stdout)}


def test_check_covers_est_reachability_credentials_and_time_left(hub: EstHub, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(est_config(hub, tmp_path, edge_ca=True))
    found = check(config)
    assert found[f"EST server {hub.est_url} reachable with a trusted certificate"][0] == "ok"
    assert found["EST server accepts the gateway's credentials"] == (
        "ok", "the bootstrap certificate authenticated")
    assert found["EST identity certificate is valid"][0] == "warning"  # not enrolled yet
    assert found["config.toml parses"][0] == "ok"
    assert found["files named in config.toml exist"][0] == "ok"

    done = edgegate("certs", "est-enroll", "-c", str(config), "--out", str(tmp_path / "state" / "est"))
    assert done.returncode == 0, done.stderr
    found = check(config)
    status, detail = found["EST identity certificate is valid"]
    assert status == "ok"
    assert re.match(r"29d 23h left|30d 0h left", detail), detail
    assert found["EST server accepts the gateway's credentials"] == (
        "ok", "the identity certificate authenticated")

    # Negative controls: a bootstrap certificate the server does not know, an EST server not trusted.
    tmp2 = tmp_path / "stranger"
    stranger = CA.create_root("Stranger").issue_identity_cert(GATEWAY_ID)
    (tmp2 / "config.toml").parent.mkdir()
    (tmp2 / "config.toml").write_text(est_config(hub, tmp2, edge_ca=False, bootstrap=stranger))
    status, detail = check(tmp2 / "config.toml")["EST server accepts the gateway's credentials"]
    assert status == "error"
    assert "client_cert_refused" in detail
    (tmp2 / "config.toml").write_text(est_config(hub, tmp2, edge_ca=False, trusted=hub.est_root))
    status, detail = check(tmp2 / "config.toml")[f"EST server {hub.est_url} reachable with a trusted certificate"]
    assert status == "error"
    assert "server_untrusted" in detail


def test_rotate_key_false_renews_with_the_same_key_and_true_with_a_new_one(hub: EstHub, tmp_path: Path) -> None:
    for rotate, same in ((False, True), (True, False)):
        d = tmp_path / str(rotate)
        text = est_config(hub, d, edge_ca=False, renew=f"rotate_key = {str(rotate).lower()}\n")
        config = parse_config(text, source=d / "config.toml")
        assert config.est is not None
        keeper = EstKeeper(config, config.est, lambda: datetime.now(UTC), Counters())
        first = asyncio.run(keeper.obtain(keeper.identity))
        keeper.identity.store.confirm()
        second = asyncio.run(keeper.obtain(keeper.identity))  # simplereenroll with the identity
        assert key_matches_cert(first.key, second.leaf.public_key()) is same
        assert second.leaf.serial_number != first.leaf.serial_number
        assert keeper.identity.store.pending  # the first pair is kept until the second has worked
