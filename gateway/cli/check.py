"""`edgegate check -c config.toml [--json]`: one ✔/⚠/✖ line per check; exit 1 on any ✖."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from gateway import checks
from gateway.checks import CheckResult, Status
from gateway.config import Config, load_config
from gateway.errors import ConfigError, EdgegateError
from gateway.pki import load_certs


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("check", help="check config, certificates, names, hub and database (like iotedge check)")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_check)


def run_checks(path: Path, now: datetime) -> list[CheckResult]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        return [checks.fail("config.toml parses", str(exc))]
    results = [checks.ok("config.toml parses", str(config.source))]
    results += _certificates(config, now)
    results.append(checks.hostname_resolves(config.hostname))
    results.append(checks.hub_reachable(config))
    results.append(checks.database(config.storage.url))
    return results


def _certificates(config: Config, now: datetime) -> list[CheckResult]:
    ec, hub = config.edge_ca, config.hub
    files = [("trust bundle", config.trust_bundle_cert), ("Edge CA certificate", ec.cert), ("Edge CA key", ec.pk)]
    if hub is not None:
        files += [("hub identity certificate", hub.identity_cert), ("hub identity key", hub.identity_pk),
                  ("hub root", hub.trust_bundle_cert)]
    results = checks.files_exist(files)
    if any(r.status is Status.FAIL for r in results):
        return results
    quickstart = ec.cert is None
    pki = config.state_dir / "pki"
    edge_path = ec.cert or pki / "edge-ca.pem"
    bundle = config.trust_bundle_cert or pki / "quickstart-root.pem"
    if not edge_path.exists():
        results.append(checks.warn("Edge CA is valid", "quickstart Edge CA not created yet; `edgegate run` creates it"))
        return results
    try:
        edge = load_certs(edge_path)
        results.append(checks.validity("Edge CA", edge[0], now, quickstart=quickstart))
        server_path = config.state_dir / "pki" / "server" / "server.pem"
        if server_path.exists():
            server = load_certs(server_path)
            results.append(checks.validity("server certificate", server[0], now))
            results.append(checks.server_names(server[0], edge[0], config.hostname, config.alt_names, now))
            results.append(checks.chain_to_bundle(server, load_certs(bundle), config.hostname, now))
        else:
            results.append(checks.warn("server certificate", "not issued yet; `edgegate run` issues it"))
    except EdgegateError as exc:
        results.append(checks.fail("certificates load", str(exc)))
    return results


def _check(args: argparse.Namespace) -> int:
    results = run_checks(args.config, datetime.now(UTC))
    if args.json:
        print(json.dumps([{"status": r.status.value, "check": r.title, "detail": r.detail} for r in results],
                         indent=2))
    else:
        for r in results:
            print(f"{r.status.mark} {r.title}" + (f"\n    {r.detail}" if r.detail else ""))
    return 1 if any(r.status is Status.FAIL for r in results) else 0
