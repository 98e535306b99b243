"""The EST sections of config.toml: what they parse into, and bad values naming key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError

SOURCE = Path("/etc/edgegate/config.toml")
BASE = 'hostname = "gw.local"\ntrust_bundle_cert = "est-root.pem"\n'
HUB = '[hub]\nhostname = "hub"\ngateway_id = "gw1"\ntrust_bundle_cert = "hub-root.pem"\n'
EST = ('[cert_issuance.est]\ntrusted_certs = ["est-server-root.pem"]\n'
       '[cert_issuance.est.auth]\nbootstrap_identity_cert = "b.pem"\nbootstrap_identity_pk = "b.key"\n'
       '[cert_issuance.est.urls]\ndefault = "https://est.local/.well-known/est/"\n')


def test_a_bootstrap_only_gateway() -> None:
    config = parse_config(BASE + HUB + EST + '[edge_ca]\nmethod = "est"\n[edge_ca.auto_renew]\nretry = "2%"\n',
                          source=SOURCE)
    est = config.est
    assert est is not None
    assert est.url == "https://est.local/.well-known/est"
    assert est.trusted_certs == (Path("/etc/edgegate/est-server-root.pem"),)
    assert est.identity_cert == Path("/etc/edgegate/state/est/identity.pem")
    assert (est.identity_auto_renew.rotate_key, est.identity_auto_renew.threshold,
            est.identity_auto_renew.retry) == (True, 80.0, 4.0)
    assert config.hub is not None
    assert config.hub.identity_cert == est.identity_cert  # the hub sees the EST identity
    edge = config.edge_ca
    assert edge.est is not None
    assert (edge.est.url, edge.est.common_name, edge.est.auto_renew.retry) == (est.url, "gw1 Edge CA", 2.0)
    assert edge.cert == Path("/etc/edgegate/state/est/edge-ca.pem")
    assert not edge.quickstart
    assert "password" not in repr(est)


def test_basic_password_stays_out_of_repr() -> None:
    with_basic = EST.replace('bootstrap_identity_pk = "b.key"\n',
                             'bootstrap_identity_pk = "b.key"\nusername = "u"\npassword = "hunter2"\n')
    config = parse_config(BASE + HUB + with_basic, source=SOURCE)
    assert config.est is not None
    assert config.est.password == "hunter2"
    assert "hunter2" not in repr(config)


BAD = [
    ("no url", BASE + HUB + EST.replace('default = "https://est.local/.well-known/est/"\n', ""),
     "cert_issuance.est.urls.default", "EST server's URL"),
    ("http url", BASE + HUB + EST.replace("https://", "http://"), "cert_issuance.est.urls.default", "https://"),
    ("half a bootstrap pair", BASE + HUB + EST.replace('bootstrap_identity_pk = "b.key"\n', ""),
     "cert_issuance.est.auth.bootstrap_identity_pk", "go together"),
    ("no credentials at all", BASE + HUB + EST.replace('bootstrap_identity_cert = "b.pem"\n', "")
     .replace('bootstrap_identity_pk = "b.key"\n', ""), "cert_issuance.est.auth.bootstrap_identity_cert",
     "no way to authenticate"),
    ("hub identity with EST", BASE + HUB + 'identity_cert = "id.pem"\n' + EST, "hub.identity_cert",
     "comes from EST"),
    ("method est without EST", BASE + '[edge_ca]\nmethod = "est"\n', "edge_ca.method", "[cert_issuance.est]"),
    ("unknown method", BASE + HUB + EST + '[edge_ca]\nmethod = "scep"\n', "edge_ca.method", '"est"'),
    ("rotate_key without EST", BASE + '[edge_ca.auto_renew]\nrotate_key = false\n',
     "edge_ca.auto_renew.rotate_key", 'method = "est"'),
    ("rotate_key not a boolean", BASE + HUB + EST + '[cert_issuance.est.identity_auto_renew]\nrotate_key = "no"\n',
     "cert_issuance.est.identity_auto_renew.rotate_key", "true or false"),
    ("retry out of range", BASE + HUB + EST + '[cert_issuance.est.identity_auto_renew]\nretry = "80%"\n',
     "cert_issuance.est.identity_auto_renew.retry", "50"),
    ("quickstart expiry with EST", BASE + HUB + EST + '[edge_ca]\nmethod = "est"\n'
     "auto_generated_edge_ca_expiry_days = 30\n", "edge_ca.auto_generated_edge_ca_expiry_days", "EST server"),
    ("unknown url key", BASE + HUB + EST + 'aziot-edged-ca = "https://x/.well-known/est"\n',
     "cert_issuance.est.urls.aziot-edged-ca", ""),
]


@pytest.mark.parametrize(("text", "key", "phrase"), [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_est_config_names_key_and_fix(text: str, key: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source=SOURCE)
    assert caught.value.key == key
    assert caught.value.file == str(SOURCE)
    assert phrase in f"{caught.value.problem} {caught.value.fix}"
