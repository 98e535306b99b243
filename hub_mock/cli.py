"""Entry point of the `hub-mock` command: `init` and `run` the hub; every other verb talks to its admin API.

The admin API is found with --admin-url, else $HUB_MOCK_ADMIN_URL, else `-c hub.toml` (its admin port
and token); the token with --admin-token, else $HUB_MOCK_ADMIN_TOKEN, else hub.toml.
Exit status: 0 done, 1 the hub refused or could not be reached, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, PKIError
from hub_mock.adminclient import AdminClient, AdminError

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """The command line cannot work as given (exit 2)."""


# -- hub process -----------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from hub_mock.provision import init_hub_dir

    try:
        root = init_hub_dir(
            args.dir,
            args.hostname,
            gateway_cas=args.gateway_ca,
            now=datetime.now(UTC),
            api_port=args.api_port,
            admin_port=args.admin_port,
            admin_token=args.admin_token or "",
            storage_url=args.storage_url,
            force=args.force,
            est=args.est,
        )
    except FileExistsError as exc:
        raise UsageError(str(exc)) from exc
    print(root)
    return 0


def _run(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging
    from hub_mock.config import load_config
    from hub_mock.server import serve

    config = load_config(args.config)
    configure_logging(args.log_level)
    return asyncio.run(
        serve(config, api_port=args.port, admin_port=args.admin_port, ready_file=args.ready_file,
              est_port=args.est_port)
    )


# -- admin verbs -----------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> AdminClient:
    url = args.admin_url or os.environ.get("HUB_MOCK_ADMIN_URL")
    token = args.admin_token or os.environ.get("HUB_MOCK_ADMIN_TOKEN")
    if args.config is not None:
        from hub_mock.config import load_config

        config = load_config(args.config)
        url = url or config.admin_url
        token = token or config.admin_token
    if not url:
        raise UsageError("where is the hub? pass -c hub.toml, --admin-url URL or set HUB_MOCK_ADMIN_URL")
    return AdminClient(url, token)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def _devices_add(args: argparse.Namespace) -> int:
    if args.ca == (args.thumbprint is not None):
        raise UsageError("give exactly one of --thumbprint T (selfSigned) or --ca (certificateAuthority)")
    if args.ca and args.secondary:
        raise UsageError("--secondary is a thumbprint: certificateAuthority devices have none")
    device = _client(args).add_device(
        args.device_id,
        parent=args.parent,
        thumbprint=args.thumbprint,
        secondary=args.secondary,
        ca=args.ca,
        enabled=not args.disabled,
    )
    _print_json(device)
    return 0


def _devices_update(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {}
    if args.parent is not None or args.no_parent:
        fields["parent"] = None if args.no_parent else args.parent
    if args.auth is not None:
        fields["auth_type"] = args.auth
        if args.auth == "certificateAuthority":
            fields.update(primary_thumbprint=None, secondary_thumbprint=None)
    if args.thumbprint is not None:
        fields["primary_thumbprint"] = args.thumbprint
    if args.secondary is not None or args.no_secondary:
        fields["secondary_thumbprint"] = None if args.no_secondary else args.secondary
    if args.status is not None:
        fields["status"] = args.status
    if not fields:
        raise UsageError(
            "nothing to change: give --parent, --no-parent, --ca, --self-signed, --thumbprint, "
            "--secondary, --no-secondary, --enabled or --disabled"
        )
    _print_json(_client(args).update_device(args.device_id, **fields))
    return 0


def _devices_status(status: str) -> Callable[[argparse.Namespace], int]:
    def verb(args: argparse.Namespace) -> int:
        device = _client(args).update_device(args.device_id, status=status)
        print(f"{device['device_id']}: {device['status']} (generation {device['generation']})")
        return 0

    return verb


def _devices_remove(args: argparse.Namespace) -> int:
    _client(args).remove_device(args.device_id)
    print(f"{args.device_id}: removed")
    return 0


def _devices_show(args: argparse.Namespace) -> int:
    _print_json(_client(args).device(args.device_id))
    return 0


def _devices_list(args: argparse.Namespace) -> int:
    devices = _client(args).devices(args.parent)
    if args.json:
        _print_json(devices)
        return 0
    _print_table(
        [
            [
                d["device_id"],
                d["status"],
                d["auth_type"],
                d["parent"] or "-",
                d["primary_thumbprint"] or "-",
                str(d["generation"]),
            ]
            for d in devices
        ],
        ["DEVICE", "STATUS", "AUTH", "PARENT", "PRIMARY THUMBPRINT", "GEN"],
    )
    return 0


def _ca_add(args: argparse.Namespace) -> int:
    ca = _client(args).add_ca(args.name, _read(args.file))
    print(f"{ca['name']}: registered, thumbprint {ca['thumbprint']}")
    return 0


def _ca_replace(args: argparse.Namespace) -> int:
    ca = _client(args).replace_ca(args.name, _read(args.file))
    print(f"{ca['name']}: replaced, thumbprint {ca['thumbprint']}")
    return 0


def _ca_remove(args: argparse.Namespace) -> int:
    ca = _client(args).remove_ca(args.name)
    print(f"{ca['removed']}: removed (thumbprint {ca['thumbprint']}); gateways drop the sessions that relied on it")
    return 0


def _identity_leaf(path: Path) -> str:
    """The first certificate of `path`: `edgegate certs create-identity` writes the leaf followed by its
    issuers, and the hub registers only the leaf. Says so when it leaves certificates out."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    text = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        return text  # the hub names what is wrong with it
    if len(certs) > 1:
        subject = certs[0].subject.rfc4514_string()
        print(f"{path} holds {len(certs)} certificates; registering the first, the identity certificate "
              f"{subject} (the others are its issuers)", file=sys.stderr)
    return certs[0].public_bytes(Encoding.PEM).decode()


def _ca_list(args: argparse.Namespace) -> int:
    cas = _client(args).cas()
    if args.json:
        _print_json(cas)
        return 0
    _print_table([[ca["name"], ca["thumbprint"]] for ca in cas], ["NAME", "THUMBPRINT (SHA-256)"])
    return 0


def _gateways_put(replace: bool) -> Callable[[argparse.Namespace], int]:
    def verb(args: argparse.Namespace) -> int:
        if (args.thumbprint is None) == (args.cert is None):
            raise UsageError("give exactly one of --thumbprint T or --cert FILE")
        client = _client(args)
        put = client.update_gateway if replace else client.add_gateway
        pem = _identity_leaf(args.cert) if args.cert is not None else None
        gateway = put(args.gateway_id, thumbprint=args.thumbprint, secondary=args.secondary, cert_pem=pem)
        print(
            f"{gateway['gateway_id']}: {'updated' if replace else 'registered'}, "
            f"primary thumbprint {gateway['primary_thumbprint']}"
        )
        return 0

    return verb


def _gateways_list(args: argparse.Namespace) -> int:
    gateways = _client(args).gateways()
    if args.json:
        _print_json(gateways)
        return 0
    _print_table(
        [
            [
                g["gateway_id"],
                g["primary_thumbprint"],
                g["secondary_thumbprint"] or "-",
                "yes" if g["has_identity_cert"] else "no",
            ]
            for g in gateways
        ],
        ["GATEWAY", "PRIMARY THUMBPRINT", "SECONDARY", "CERT"],
    )
    return 0


def _messages(args: argparse.Namespace) -> int:
    answer = _client(args).messages(args.device, limit=args.limit)
    if args.json:
        _print_json(answer)
        return 0
    import base64

    rows = []
    for m in answer["messages"]:
        payload = base64.b64decode(m["payload_b64"])
        text = payload.decode("utf-8", "replace")
        rows.append(
            [
                m["received_time"],
                m["device_id"],
                m.get("kind", "telemetry"),
                m["gateway_id"],
                m["message_id"],
                text if len(text) <= 60 else text[:57] + "...",
            ]
        )
    _print_table(rows, ["RECEIVED", "DEVICE", "KIND", "GATEWAY", "MESSAGE ID", "PAYLOAD"])
    print(f"{len(rows)} shown, {answer['total']} stored")
    return 0


def _property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected key=value")
    return key, value


def _send(args: argparse.Namespace) -> int:
    seq = _client(args).send_c2d(args.device_id, args.payload.encode(), dict(args.property))
    print(f"queued for {args.device_id}: seq {seq}")
    return 0


def _fault(args: argparse.Namespace) -> int:
    if args.action in ("error", "latency", "poison") and args.value is None:
        raise UsageError(
            f"fault {args.action} needs a value: "
            + {"error": "a status, e.g. 503", "latency": "milliseconds, e.g. 500",
               "poison": "a status, e.g. 400"}[args.action]
        )
    if args.action not in ("error", "latency", "poison") and args.value is not None:
        raise UsageError(f"fault {args.action} takes no value")
    _print_json(_client(args).fault(args.action, args.value))
    return 0


def _est_show(args: argparse.Namespace) -> int:
    view = _client(args).call("GET", "/admin/est")
    if args.json:
        _print_json(view)
        return 0
    policy, faults = view["policy"], view["faults"]
    from datetime import timedelta

    from gateway.config_checks import format_duration

    lifetimes = [format_duration(timedelta(seconds=policy[k])) for k in ("identity_lifetime", "edge_ca_lifetime")]
    print(f"EST port {view['port']}, CA {view['ca']}; identity lifetime {lifetimes[0]}, "
          f"Edge CA lifetime {lifetimes[1]}, Basic {'on' if policy['basic_auth'] else 'off'}; "
          f"faults {faults}; misbehave {view['misbehave'] or 'off'}")
    _print_table([[i["issued_at"], i["operation"], i["profile"], i["subject"], i["client"], i["not_after"]]
                  for i in view["issued"]], ["ISSUED", "OPERATION", "PROFILE", "SUBJECT", "CLIENT", "NOT AFTER"])
    return 0


def _est_fault(args: argparse.Namespace) -> int:
    if (args.action in ("error", "latency")) != (args.value is not None):
        raise UsageError(f"fault {args.action} " + ("needs a value" if args.value is None else "takes no value"))
    _print_json(_client(args).call("POST", "/admin/est/faults", {"action": args.action, "value": args.value}))
    return 0


def _est_policy(args: argparse.Namespace) -> int:
    body = {k: v for k, v in (("identity_lifetime", args.identity_lifetime),
                              ("edge_ca_lifetime", args.edge_ca_lifetime)) if v is not None}
    if not body:
        raise UsageError("give --identity-lifetime and/or --edge-ca-lifetime (seconds)")
    _print_json(_client(args).call("POST", "/admin/est/policy", body)["policy"])
    return 0


def _est_misbehave(args: argparse.Namespace) -> int:
    mode = None if args.mode == "off" else args.mode
    print(f"EST misbehave: {_client(args).call('POST', '/admin/est/misbehave', {'mode': mode})['misbehave'] or 'off'}")
    return 0


def _est_bootstrap_cert(args: argparse.Namespace) -> int:
    from gateway.pki import CA

    ca_cert, ca_key = args.dir / "est-bootstrap-ca.pem", args.dir / "est-bootstrap-ca.key"
    if not ca_key.exists():
        raise UsageError(f"{ca_key} does not exist: run `hub-mock init --est` first")
    issued = CA.load(ca_cert, ca_key).issue_identity_cert(args.gateway_id, days=args.days)
    args.out.mkdir(parents=True, exist_ok=True)
    cert = issued.cert_pem.write_to_path(args.out / f"{args.gateway_id}-bootstrap.pem")
    key = issued.private_key_pem.write_to_path(args.out / f"{args.gateway_id}-bootstrap.key", private=True)
    print(f"wrote {cert}\nwrote {key} (private key, mode 0600)")
    return 0


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON ({exc}); quote it, e.g. '{{\"interval\": 5}}'") from exc


def _twin_show(args: argparse.Namespace) -> int:
    _print_json(_client(args).twins.show(args.device_id))
    return 0


def _twin_set_desired(args: argparse.Namespace) -> int:
    patch = _json_arg(args.patch, "the patch")
    if not isinstance(patch, dict):
        raise UsageError('the patch must be a JSON object, e.g. \'{"interval": 5}\' (null deletes a key)')
    _print_json(_client(args).twins.set_desired(args.device_id, patch))
    return 0


def _invoke(args: argparse.Namespace) -> int:
    payload = _json_arg(args.payload, "--payload") if args.payload is not None else None
    print(json.dumps(_client(args).twins.invoke(args.device_id, args.method, payload, args.timeout)))
    return 0


# -- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full `hub-mock` argument parser."""
    parser = argparse.ArgumentParser(
        prog="hub-mock", description="The IoT Hub stand-in for edgegate tests and drills."
    )
    from gateway import __version__

    parser.add_argument("--version", action="version", version=f"hub-mock (edgegate) {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    init = verbs.add_parser("init", help="create a hub directory: hub.toml, hub root, server cert")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--hostname", required=True, help="the hub's host name (server cert CN/SAN)")
    init.add_argument(
        "--gateway-ca",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a CA bundle gateway identity certs may chain to (repeatable)",
    )
    init.add_argument("--api-port", type=int, default=8443)
    init.add_argument("--admin-port", type=int, default=8444)
    init.add_argument("--admin-token", help="require this bearer token on the admin API")
    init.add_argument("--storage-url", default="sqlite:///registry.db", help="SQLAlchemy URL of the registry")
    init.add_argument("--force", action="store_true", help="replace an existing hub.toml and certificates")
    init.add_argument("--est", action="store_true",
                      help="also set up the EST server: EST root and CA, a bootstrap CA, an [est] table")
    init.set_defaults(func=_init)

    run = verbs.add_parser("run", help="serve until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", type=Path, required=True, help="path to hub.toml")
    run.add_argument("--port", type=int, help="API port (overrides hub.toml; 0 = any free port)")
    run.add_argument("--admin-port", type=int, help="admin port (overrides hub.toml; 0 = any free port)")
    run.add_argument("--est-port", type=int, help="EST port (overrides hub.toml [est] port; 0 = any free port)")
    run.add_argument("--ready-file", type=Path, help="write the bound ports here as JSON once listening")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=_run)

    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("-c", "--config", type=Path, help="hub.toml (admin port and token)")
    conn.add_argument("--admin-url", help="e.g. http://127.0.0.1:8444 (or $HUB_MOCK_ADMIN_URL)")
    conn.add_argument("--admin-token", help="admin bearer token (or $HUB_MOCK_ADMIN_TOKEN)")

    devices = verbs.add_parser("devices", help="the device registry").add_subparsers(
        dest="devices_verb", metavar="VERB", required=True
    )
    add = devices.add_parser("add", parents=[conn], help="register a device")
    add.add_argument("device_id")
    add.add_argument("--parent", help="the gateway whose device scope holds it")
    add.add_argument("--thumbprint", help="selfSigned: primary thumbprint (SHA-1 or SHA-256, any form)")
    add.add_argument("--secondary", help="selfSigned: secondary thumbprint")
    add.add_argument("--ca", action="store_true", help="certificateAuthority: chain to a registered CA")
    add.add_argument("--disabled", action="store_true")
    add.set_defaults(func=_devices_add)

    upd = devices.add_parser("update", parents=[conn], help="change a device (rotate, move scope, auth type)")
    upd.add_argument("device_id")
    parent = upd.add_mutually_exclusive_group()
    parent.add_argument("--parent", help="move it to this gateway's scope")
    parent.add_argument("--no-parent", action="store_true", help="take it out of every scope")
    auth = upd.add_mutually_exclusive_group()
    auth.add_argument("--ca", dest="auth", action="store_const", const="certificateAuthority")
    auth.add_argument("--self-signed", dest="auth", action="store_const", const="selfSigned")
    upd.add_argument("--thumbprint", help="new primary thumbprint")
    secondary = upd.add_mutually_exclusive_group()
    secondary.add_argument("--secondary", help="new secondary thumbprint")
    secondary.add_argument("--no-secondary", action="store_true")
    status = upd.add_mutually_exclusive_group()
    status.add_argument("--enabled", dest="status", action="store_const", const="enabled")
    status.add_argument("--disabled", dest="status", action="store_const", const="disabled")
    upd.set_defaults(func=_devices_update)

    for name, func in (
        ("enable", _devices_status("enabled")),
        ("disable", _devices_status("disabled")),
        ("remove", _devices_remove),
        ("show", _devices_show),
    ):
        verb = devices.add_parser(name, parents=[conn], help=f"{name} a device")
        verb.add_argument("device_id")
        verb.set_defaults(func=func)
    lst = devices.add_parser("list", parents=[conn], help="list devices")
    lst.add_argument("--parent", help="only this gateway's scope")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_devices_list)

    ca = verbs.add_parser("ca", help="registered CA certificates").add_subparsers(
        dest="ca_verb", metavar="VERB", required=True
    )
    ca_add = ca.add_parser("add", parents=[conn], help="register a CA certificate")
    ca_add.add_argument("name")
    ca_add.add_argument("file", type=Path)
    ca_add.set_defaults(func=_ca_add)
    ca_replace = ca.add_parser("replace", parents=[conn], help="put a new certificate under a registered CA's name")
    ca_replace.add_argument("name")
    ca_replace.add_argument("file", type=Path)
    ca_replace.set_defaults(func=_ca_replace)
    ca_remove = ca.add_parser("remove", parents=[conn], help="unregister a CA (live sessions chained to it end)")
    ca_remove.add_argument("name")
    ca_remove.set_defaults(func=_ca_remove)
    ca_list = ca.add_parser("list", parents=[conn])
    ca_list.add_argument("--json", action="store_true")
    ca_list.set_defaults(func=_ca_list)

    gateways = verbs.add_parser("gateways", help="registered gateways").add_subparsers(
        dest="gateways_verb", metavar="VERB", required=True
    )
    for name, replace in (("add", False), ("update", True)):
        gw = gateways.add_parser(
            name, parents=[conn], help=f"{name} a gateway by identity thumbprint or cert"
        )
        gw.add_argument("gateway_id")
        gw.add_argument(
            "--thumbprint", help="identity cert thumbprint (its chain must reach a registered CA)"
        )
        gw.add_argument("--cert", type=Path, help="identity cert file, or its chain file (the first "
                                                  "certificate is taken); self-signed certs need this")
        gw.add_argument("--secondary", help="secondary identity thumbprint")
        gw.set_defaults(func=_gateways_put(replace))
    gw_list = gateways.add_parser("list", parents=[conn])
    gw_list.add_argument("--json", action="store_true")
    gw_list.set_defaults(func=_gateways_list)

    messages = verbs.add_parser("messages", parents=[conn], help="telemetry received")
    messages.add_argument("--device")
    messages.add_argument("--limit", type=int, default=1000)
    messages.add_argument("--json", action="store_true")
    messages.set_defaults(func=_messages)

    send = verbs.add_parser("send", parents=[conn], help="queue a cloud-to-device message")
    send.add_argument("device_id")
    send.add_argument("payload")
    send.add_argument("--property", type=_property, action="append", default=[], metavar="KEY=VALUE")
    send.set_defaults(func=_send)

    twin = verbs.add_parser("twin", help="device twins").add_subparsers(
        dest="twin_verb", metavar="VERB", required=True
    )
    twin_show = twin.add_parser("show", parents=[conn], help="a device's twin with $metadata")
    twin_show.add_argument("device_id")
    twin_show.set_defaults(func=_twin_show)
    twin_set = twin.add_parser("set-desired", parents=[conn], help="merge a patch into the desired properties")
    twin_set.add_argument("device_id")
    twin_set.add_argument("patch", help='a JSON merge patch, e.g. \'{"interval": 5}\'; null deletes a key')
    twin_set.set_defaults(func=_twin_set_desired)

    invoke = verbs.add_parser("invoke", parents=[conn], help="call a direct method on a device")
    invoke.add_argument("device_id")
    invoke.add_argument("method")
    invoke.add_argument("--payload", help="JSON payload (default: null)")
    invoke.add_argument("--timeout", type=int, default=30, help="seconds to wait for the answer (5-300)")
    invoke.set_defaults(func=_invoke)

    fault = verbs.add_parser("fault", parents=[conn], help="fault switches on the API port")
    fault.add_argument("action", choices=["down", "up", "blackhole", "error", "latency", "clear", "poison"])
    fault.add_argument("value", type=int, nargs="?",
                       help="error: HTTP status; latency: milliseconds; poison: the 4xx for a POISON payload")
    fault.set_defaults(func=_fault)

    est = verbs.add_parser("est", help="the EST server (RFC 7030): issued certificates, policy, faults").add_subparsers(
        dest="est_verb", metavar="VERB", required=True
    )
    show = est.add_parser("show", parents=[conn], help="policy, faults and the certificates it issued")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_est_show)
    est_fault = est.add_parser("fault", parents=[conn], help="fault switches on the EST port")
    est_fault.add_argument("action", choices=["down", "up", "blackhole", "error", "latency", "clear"])
    est_fault.add_argument("value", type=int, nargs="?", help="error: HTTP status; latency: milliseconds")
    est_fault.set_defaults(func=_est_fault)
    policy = est.add_parser("policy", parents=[conn], help="change lifetimes of newly issued certificates")
    policy.add_argument("--identity-lifetime", type=float, metavar="SECONDS")
    policy.add_argument("--edge-ca-lifetime", type=float, metavar="SECONDS")
    policy.set_defaults(func=_est_policy)
    bad = est.add_parser("misbehave", parents=[conn], help="answer enrollments with garbage or another key's cert")
    bad.add_argument("mode", choices=["garbage", "wrong_key", "off"])
    bad.set_defaults(func=_est_misbehave)
    boot = est.add_parser("bootstrap-cert", help="issue a bootstrap certificate from the hub's EST bootstrap CA")
    boot.add_argument("gateway_id")
    boot.add_argument("--dir", type=Path, required=True, help="the hub directory (`hub-mock init --est`)")
    boot.add_argument("--out", type=Path, default=Path("."), help="where to write ID-bootstrap.pem/.key")
    boot.add_argument("--days", type=int, default=365)
    boot.set_defaults(func=_est_bootstrap_cert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the verb; see the module docstring for exit statuses."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (AdminError, PKIError, OSError) as exc:
        # The hub refused, a certificate is unusable, a file is unreadable or a port is taken.
        print(f"hub-mock: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ConfigError, UsageError) as exc:
        print(f"hub-mock: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
