"""`edgegate check -c config.toml [--json]`: one ✔/⚠/✖ line per check, like `iotedge check`; exit 1 on any ✖.

This module does the looking (files, DNS, the hub, the database); `gateway.checks` does the judging.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from gateway import checks
from gateway.checks import CheckResult, HubProbe, Status
from gateway.config import Config, HubConfig, load_config
from gateway.db.engine import database_exists, migration_status, redacted
from gateway.db.guard import state_dir_problem
from gateway.errors import ConfigError, EdgegateError
from gateway.pki import CA, is_self_signed, load_certs
from gateway.tls.contexts import build_hub_client_context

HUB_TIMEOUT = 3.0  # seconds for connect + handshake + first answer: a check, not a retry loop


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("check", help="check config, certificates, names, hub and database (like iotedge check)")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_check)


def run_checks(path: Path, now: datetime) -> list[CheckResult]:
    """Every check for the config at `path`; a config that does not load is the only result."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return [checks.config_broken(str(exc))]
    results = [checks.config_parses(config.source)]
    results += _files(config)
    results += _certificates(config, now)
    results.append(_resolve(config.hostname))
    if config.est is not None:
        from gateway.est.checks import est_results

        results += est_results(config, now)
    if config.hub is not None and config.est is not None and not config.hub.identity_cert.exists():
        results.append(checks.warn("hub reachable", "the EST identity is not enrolled yet; `edgegate run` "
                                                    "enrolls it, then the hub is dialled with it"))
    else:
        results.append(checks.hub_not_configured() if config.hub is None
                       else checks.hub_reachable(config.hub, probe_hub(config.hub, HUB_TIMEOUT)))
    results.append(_database(config.storage.url))
    results.append(checks.state_dir_writable(config.state_dir, state_dir_problem(config.state_dir)))
    ob = config.outbox
    results.append(checks.outbox_promise(ob.time_to_live, ob.durability, ob.max_bytes))
    results.append(_clock(config, now))
    results += _capacity(config)
    return results


def _clock(config: Config, now: datetime) -> CheckResult:
    from gateway.clock_watch import judge_offline
    from gateway.pki.keeper import held_certificates

    verdict = judge_offline(config.state_dir, held_certificates(config), now, config.auth.clock_skew_tolerance)
    return checks.system_clock(verdict.state.value, verdict.sentence)


def _capacity(config: Config) -> list[CheckResult]:
    """What `edgegate run` will allow (it raises its soft open-files limit to the hard one first), and what
    its memory guard will watch."""
    import resource

    from gateway.service.budget import connection_budget
    from gateway.service.resources import read_resources

    found = read_resources(config.limits.memory)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        found = replace(found, open_files=int(hard))
    return [checks.connection_budget(connection_budget(config.limits.max_connections, found)),
            checks.memory_guard(found)]


# ---- files -------------------------------------------------------------------------------------


def _quickstart_paths(config: Config) -> tuple[Path, Path, Path]:
    """Where `ensure_quickstart_edge_ca` keeps the Edge CA (cert, key) and the local root."""
    pki = config.state_dir / "pki"
    return pki / "edge-ca.pem", pki / "edge-ca.key", pki / "quickstart-root.pem"


def _server_paths(config: Config) -> tuple[Path, Path]:
    """Where `ensure_server_cert` keeps the server chain and key."""
    server = config.state_dir / "pki" / "server"
    return server / "server.pem", server / "server.key"


def _files(config: Config) -> list[CheckResult]:
    named: list[tuple[str, Path | None]] = [("trust_bundle_cert", config.trust_bundle_cert),
                                           ("edge_ca.cert", config.edge_ca.cert), ("edge_ca.pk", config.edge_ca.pk)]
    if config.hub is not None:
        named += [("hub.identity_cert", config.hub.identity_cert), ("hub.identity_pk", config.hub.identity_pk),
                  ("hub.trust_bundle_cert", config.hub.trust_bundle_cert)]
    if config.est is not None:
        # EST-issued files appear at the first `edgegate run`; the EST checks report them.
        managed = {config.est.identity_cert, config.est.identity_pk} | (
            {config.edge_ca.cert, config.edge_ca.pk} if config.edge_ca.est is not None else set())
        named = [(what, path) for what, path in named if path not in managed or (path and path.exists())]
    present = [(what, path, path.exists()) for what, path in named if path is not None]
    keys = [path for what, path in named if path is not None and what.endswith("pk")]
    # The gateway's own keys in state_dir are checked too: config.toml does not name them.
    keys += [config.state_dir / "pki" / "quickstart-root.key", _quickstart_paths(config)[1], _server_paths(config)[1]]
    modes = [(path, path.stat().st_mode) for path in keys if path.exists()]
    return [checks.files_exist(present), checks.key_file_modes(modes)]


# ---- certificates ------------------------------------------------------------------------------


def _edge_ca_paths(config: Config) -> tuple[Path, Path, Path]:
    """(Edge CA cert, its key, the trust bundle): provided in config.toml, or the quickstart files."""
    edge_ca = config.edge_ca
    if edge_ca.cert is not None and edge_ca.pk is not None and config.trust_bundle_cert is not None:
        return edge_ca.cert, edge_ca.pk, config.trust_bundle_cert
    return _quickstart_paths(config)


def _certificates(config: Config, now: datetime) -> list[CheckResult]:
    quickstart = config.edge_ca.quickstart
    edge_path, key_path, bundle_path = _edge_ca_paths(config)
    if quickstart and not (edge_path.exists() and key_path.exists() and bundle_path.exists()):
        return [checks.quickstart_not_created(edge_path)]
    if config.edge_ca.est is not None and not (edge_path.exists() and key_path.exists()):
        return [checks.warn("Edge CA is valid", f"{edge_path} not enrolled yet; `edgegate run` obtains it over EST")]
    results: list[CheckResult] = []
    try:
        edge_ca = CA.load(edge_path, key_path)
        roots = load_certs(bundle_path)
        results.append(checks.validity("Edge CA", edge_ca.cert, now, quickstart=quickstart))
        results.append(checks.validity("trust bundle root", roots[0], now))
        chain_path, server_key = _server_paths(config)
        if chain_path.exists() and server_key.exists():
            chain = load_certs(chain_path)
            results.append(checks.validity("server certificate", chain[0], now))
            results.append(checks.server_names(chain[0], edge_ca.cert, config.hostname, config.alt_names, now))
            results.append(checks.chain_to_bundle(chain, roots, config.hostname, now))
        else:
            # Not issued yet: issue one in memory exactly as `edgegate run` would, and check that.
            issued = edge_ca.issue_server_cert(config.hostname, *config.alt_names, now=now)
            chain = [issued.cert, *(c for c in issued.chain if not is_self_signed(c))]
            results.append(checks.chain_to_bundle(chain, roots, config.hostname, now, issued_in_memory=True))
    except EdgegateError as exc:
        results.append(checks.certificates_unreadable(str(exc)))
    return results


# ---- the outside world ---------------------------------------------------------------------------


def _resolve(hostname: str) -> CheckResult:
    try:
        infos = socket.getaddrinfo(hostname, None)
    except OSError as exc:
        return checks.hostname_resolution(hostname, [], exc.strerror or str(exc))
    return checks.hostname_resolution(hostname, sorted({str(info[4][0]) for info in infos}), None)


def probe_hub(hub: HubConfig, timeout: float) -> HubProbe:
    """Mutual TLS to hub.url, verifying the hub for hub.hostname; then one HTTP request, because with TLS
    1.3 a hub that refuses the gateway's identity certificate says so only after the handshake."""
    parts = urlsplit(hub.url)
    address = (parts.hostname or hub.hostname, parts.port or 443)
    request = f"HEAD / HTTP/1.1\r\nHost: {hub.hostname}\r\nConnection: close\r\n\r\n".encode()
    try:
        ctx = build_hub_client_context(hub.trust_bundle_cert, hub.identity_cert, hub.identity_pk)
        with socket.create_connection(address, timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=hub.hostname) as tls:
            version = tls.version()
            try:
                tls.sendall(request)
                answer = tls.recv(1)
            except TimeoutError:
                return HubProbe(tls_version=version, detail=f"no HTTP answer within {timeout:g} s")
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError) as exc:
                return checks.closed_after_handshake(version, str(exc) or type(exc).__name__)
            if not answer:
                return checks.closed_after_handshake(version, "end of stream")
    except (OSError, EdgegateError) as exc:
        return checks.classify_hub_error(exc, timeout)
    return HubProbe(tls_version=version)


def _database(url: str) -> CheckResult:
    try:
        status = migration_status(url) if database_exists(url) else None
    except EdgegateError as exc:
        return checks.database(redacted(url), None, str(exc))
    return checks.database(redacted(url), status, None)


# ---- output ------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    results = run_checks(args.config, datetime.now(UTC))
    if args.json:
        print(json.dumps([{"status": r.status.value, "check": r.title, "detail": r.detail} for r in results],
                         indent=2))
    else:
        for r in results:
            print(f"{r.status.mark} {r.title}" + (f"\n    {r.detail}" if r.detail else ""))
    return 1 if any(r.status is Status.FAIL for r in results) else 0
