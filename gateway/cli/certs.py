"""`edgegate certs`: the certificates of the seed scenario without openssl incantations.

Mirrors IoT Edge's certGen.sh (create_root_and_intermediate, create_edge_device_ca_certificate,
create_device_certificate ...); docs/PKI.md has the mapping. Every verb prints each file it wrote; keys
are written 0600 and never printed; nothing is overwritten without --force, and a verb that would
overwrite writes nothing at all. Usage errors are one line and exit 2 (PKIError, see gateway.cli.main).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.config import load_config
from gateway.errors import PKIError
from gateway.pki import (
    CA,
    Blob,
    IssuedCert,
    KeyType,
    cert_pem,
    colon_form,
    load_certs,
    self_signed_device_cert,
    thumbprint_sha1,
    thumbprint_sha256,
    verify_chain,
)

KEY_TYPES = {kt.value: kt for kt in KeyType}
DEFAULT_OUT = Path("certs")
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}

# A file to write: its name in --out, its content, and whether it is a private key (mode 0600).
Output = tuple[str, Blob, bool]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = subparsers.add_parser("certs", help="create and inspect the certificates of a transparent gateway")
    verbs = certs.add_subparsers(dest="certs_verb", required=True, metavar="VERB")

    def creator(name: str, help_text: str, days: int) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--days", type=int, default=days, help=f"validity in days (default {days})")
        # Checked in the verb, not by argparse `choices`, so that a bad value is one line, not a usage dump.
        p.add_argument("--key-type", default=KeyType.ECDSA_P256.value, metavar="{" + ",".join(KEY_TYPES) + "}",
                       help="key algorithm (default ecdsa-p256: cheapest on a Raspberry Pi)")
        p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default ./certs)")
        p.add_argument("--force", action="store_true", help="overwrite existing files")
        return p

    issuer_help = ("issuer: a name in --out ({default}, root, or an Edge CA's NAME) or a path prefix with a '/' "
                   "(reads PREFIX.cert.pem and PREFIX.key.pem)")

    p = creator("create-root-and-intermediate", "a root CA and an intermediate CA below it (certGen.sh "
                "create_root_and_intermediate)", 3650)
    p.add_argument("--root-cn", default="edgegate Root CA")
    p.add_argument("--intermediate-cn", default="edgegate Intermediate CA")
    p.set_defaults(func=_root_and_intermediate)

    p = creator("create-edge-ca", "an Edge CA (pathlen 0) that signs the gateway's server certificates "
                "(certGen.sh create_edge_device_ca_certificate)", 90)
    p.add_argument("name", help="file stem, also the Edge CA's common name")
    p.add_argument("--issuer", default="intermediate", help=issuer_help.format(default="intermediate"))
    p.set_defaults(func=_edge_ca)

    p = creator("create-server", "the gateway's server certificate for HOSTNAME (and ALT names or IPs), "
                "clamped to the Edge CA's expiry", 30)
    p.add_argument("hostname", help="the exact name devices dial: CN and first SAN")
    p.add_argument("alt_names", nargs="*", metavar="ALT", help="more DNS names or IP addresses")
    p.add_argument("--issuer", required=True, help="the Edge CA: NAME as given to create-edge-ca, or a path prefix")
    p.set_defaults(func=_server)

    p = creator("create-device", "a device identity certificate: CA-signed with CN = ID, or --self-signed for "
                "thumbprint authentication (certGen.sh create_device_certificate)", 365)
    p.add_argument("device_id", metavar="ID")
    p.add_argument("--self-signed", action="store_true", help="no issuer: authenticate by SHA-256 thumbprint")
    p.add_argument("--issuer", default="intermediate", help=issuer_help.format(default="intermediate"))
    p.set_defaults(func=_device)

    p = creator("create-identity", "the gateway's identity certificate, presented to the hub", 365)
    p.add_argument("gateway_id", metavar="ID")
    p.add_argument("--issuer", default="intermediate", help=issuer_help.format(default="intermediate"))
    p.set_defaults(func=_identity)

    p = verbs.add_parser("thumbprint", help="SHA-256 and SHA-1 thumbprints: openssl's colon form and IoT Hub's hex")
    p.add_argument("file", type=Path)
    p.set_defaults(func=_thumbprint)

    p = verbs.add_parser("chain", help="subject, issuer, dates, CA/pathlen, EKU of each certificate, leaf first")
    p.add_argument("file", type=Path)
    p.set_defaults(func=_chain)

    p = verbs.add_parser("verify", help="verify a chain against trusted roots; exit 1 with the reason if it fails")
    p.add_argument("file", type=Path, help="leaf first, then any intermediates")
    p.add_argument("--ca-file", type=Path, required=True, help="trusted root(s)")
    p.add_argument("--untrusted", type=Path, help="more intermediates")
    p.add_argument("--hostname", help="the name a server certificate must be valid for (implies --purpose server)")
    p.add_argument("--purpose", choices=["server", "client"], help="default: server with --hostname, else client")
    p.set_defaults(func=_verify)

    p = verbs.add_parser("trust-bundle", help="export the root(s) child devices must trust to reach this gateway")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_trust_bundle)

    p = verbs.add_parser("est-enroll", help="enroll once over EST with config.toml's [cert_issuance.est] and write "
                         "the certificate and key to --out (tests a PKI provider's endpoint)")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default ./certs)")
    p.add_argument("--edge-ca", action="store_true", help="ask for an Edge CA (CA:TRUE) instead of an identity")
    p.add_argument("--url", help="EST base URL (default: the config's, e.g. https://est/.well-known/est)")
    p.add_argument("--common-name", help="subject CN (default: hub.gateway_id, or '<id> Edge CA')")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_est_enroll)


# ---- arguments and files -----------------------------------------------------------------------


def _key_type(args: argparse.Namespace) -> KeyType:
    try:
        return KEY_TYPES[args.key_type]
    except KeyError:
        raise PKIError(f"--key-type {args.key_type!r} is not one of {', '.join(KEY_TYPES)}") from None


def _days(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise PKIError(f"--days must be at least 1, got {args.days}")
    return int(args.days)


def _write_all(out: Path, outputs: Sequence[Output], *, force: bool) -> None:
    """Write every file, or none: existing files are a one-line error unless --force."""
    existing = [str(out / name) for name, _, _ in outputs if (out / name).exists()]
    if existing and not force:
        raise PKIError(f"will not overwrite {', '.join(existing)}: nothing written (pass --force to replace)")
    for name, blob, private in outputs:
        path = blob.write_to_path(out / name, private=private)
        print(f"wrote {path}" + (" (private key, mode 0600)" if private else ""))


def _issuer_prefix(out: Path, issuer: str) -> Path:
    """A bare name lives in --out; anything with a '/' is a path prefix of its own."""
    return Path(issuer) if "/" in issuer else out / issuer


def _load_ca(out: Path, issuer: str) -> CA:
    prefix = _issuer_prefix(out, issuer)
    cert, key = prefix.with_name(prefix.name + ".cert.pem"), prefix.with_name(prefix.name + ".key.pem")
    missing = [str(p) for p in (cert, key) if not p.exists()]
    if missing:
        raise PKIError(f"issuer {issuer!r} not found: {' and '.join(missing)} missing "
                       "(run create-root-and-intermediate, or create-edge-ca for an Edge CA, first)")
    ca = CA.load(cert, key)
    try:
        is_ca = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PKIError(f"{cert} is not a CA certificate (no basicConstraints CA:TRUE): it cannot be an issuer")
    return ca


def _expiry_note(issued: x509.Certificate, issuer: x509.Certificate) -> str:
    clamped = issued.not_valid_after_utc == issuer.not_valid_after_utc
    return f"valid until {issued.not_valid_after_utc:%Y-%m-%d %H:%M} UTC" + \
        (" (clamped to its issuer's expiry)" if clamped else "")


# ---- creating ----------------------------------------------------------------------------------


def _root_and_intermediate(args: argparse.Namespace) -> int:
    key_type, days = _key_type(args), _days(args)
    root = CA.create_root(args.root_cn, days=days, key_type=key_type, path_length=None)
    # pathlen 1: an Edge CA (pathlen 0) fits below the intermediate, nothing deeper.
    inter = root.create_child_ca(args.intermediate_cn, days=days, key_type=key_type, path_length=1)
    _write_all(args.out, [
        ("root.cert.pem", root.cert_pem, False),
        ("root.key.pem", root.private_key_pem, True),
        ("intermediate.cert.pem", inter.cert_pem, False),
        ("intermediate.key.pem", inter.private_key_pem, True),
        ("intermediate.fullchain.pem", Blob(cert_pem(inter.cert, root.cert)), False),
    ], force=args.force)
    print("root.cert.pem is the trust bundle: child devices get it as their CA file")
    return 0


def _edge_ca(args: argparse.Namespace) -> int:
    key_type, days = _key_type(args), _days(args)
    issuer = _load_ca(args.out, args.issuer)
    edge = issuer.create_child_ca(args.name, days=days, key_type=key_type, path_length=0)
    cert_name, key_name = f"{args.name}.cert.pem", f"{args.name}.key.pem"
    # Edge CA + intermediates, no root: what follows the server certificate on the wire.
    _write_all(args.out, [(cert_name, edge.chain_pem(), False), (key_name, edge.private_key_pem, True)],
               force=args.force)
    print(f"Edge CA {args.name!r} {_expiry_note(edge.cert, issuer.cert)}")
    print(f'config.toml: [edge_ca] cert = "{args.out / cert_name}", pk = "{args.out / key_name}"')
    return 0


def _server(args: argparse.Namespace) -> int:
    key_type, days = _key_type(args), _days(args)
    edge = _load_ca(args.out, args.issuer)
    issued = edge.issue_server_cert(args.hostname, *args.alt_names, days=days, key_type=key_type)
    stem = f"{args.hostname}.server"
    _write_all(args.out, [(f"{stem}.cert.pem", issued.fullchain_pem(), False),
                          (f"{stem}.key.pem", issued.private_key_pem, True)], force=args.force)
    print(f"server certificate for {', '.join([args.hostname, *args.alt_names])} "
          f"{_expiry_note(issued.cert, edge.cert)}")
    return 0


def _device(args: argparse.Namespace) -> int:
    key_type, days = _key_type(args), _days(args)
    issued: IssuedCert
    if args.self_signed:
        issued = self_signed_device_cert(args.device_id, days=days, key_type=key_type)
    else:
        issued = _load_ca(args.out, args.issuer).issue_device_cert(args.device_id, days=days, key_type=key_type)
    # Leaf + intermediates: a device must send the whole chain below the root.
    _write_all(args.out, [(f"{args.device_id}.cert.pem", issued.fullchain_pem(), False),
                          (f"{args.device_id}.key.pem", issued.private_key_pem, True)], force=args.force)
    if args.self_signed:
        thumbprint = issued.thumbprint_sha256.upper()
        print(f"SHA-256 thumbprint: {thumbprint}")
        print(f"register it: hub-mock devices add {args.device_id} --parent GATEWAY_ID --thumbprint {thumbprint}")
    else:
        print(f"CN = {args.device_id}; register it: hub-mock devices add {args.device_id} --parent GATEWAY_ID --ca")
    return 0


def _identity(args: argparse.Namespace) -> int:
    key_type, days = _key_type(args), _days(args)
    issued = _load_ca(args.out, args.issuer).issue_identity_cert(args.gateway_id, days=days, key_type=key_type)
    stem = f"{args.gateway_id}.identity"
    _write_all(args.out, [(f"{stem}.cert.pem", issued.fullchain_pem(), False),
                          (f"{stem}.key.pem", issued.private_key_pem, True)], force=args.force)
    print(f"SHA-256 thumbprint: {issued.thumbprint_sha256.upper()}")
    print(f'config.toml: [hub] identity_cert = "{args.out / (stem + ".cert.pem")}", '
          f'identity_pk = "{args.out / (stem + ".key.pem")}"')
    return 0


# ---- inspecting --------------------------------------------------------------------------------


def _thumbprint(args: argparse.Namespace) -> int:
    cert = load_certs(args.file)[0]
    for name, value in (("SHA-256", thumbprint_sha256(cert)), ("SHA-1", thumbprint_sha1(cert))):
        print(f"{name} Fingerprint={colon_form(value)}")
        print(f"{name} (IoT Hub)={value.upper()}")
    return 0


def leaf_first(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Order a chain leaf → root by following issuers, dropping repeats; a file that is not one chain
    (a bundle of roots, say) keeps its order."""
    unique = list(dict.fromkeys(certs))
    issuers = {c.issuer for c in unique if c.issuer != c.subject}
    leaves = [c for c in unique if c.subject not in issuers]
    if len(leaves) != 1:
        return unique
    ordered = [leaves[0]]
    by_subject = {c.subject: c for c in unique}
    while len(ordered) < len(unique):
        nxt = by_subject.get(ordered[-1].issuer)
        if nxt is None or nxt in ordered:
            return unique
        ordered.append(nxt)
    return ordered


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def describe(cert: x509.Certificate) -> list[str]:
    """The lines `certs chain` prints for one certificate."""
    lines = [f"subject:  {cert.subject.rfc4514_string()}", f"issuer:   {cert.issuer.rfc4514_string()}",
             f"validity: {cert.not_valid_before_utc:%Y-%m-%d %H:%M} .. {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"]
    bc = _ext(cert, x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints):
        lines.append(f"CA:       {'TRUE' if bc.ca else 'FALSE'}"
                     + (f", pathlen {bc.path_length}" if bc.path_length is not None else ""))
    else:
        lines.append("CA:       (no basicConstraints)")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage):
        lines.append(f"EKU:      {', '.join(_EKU_NAMES.get(o, o.dotted_string) for o in eku)}")
    san = _ext(cert, x509.SubjectAlternativeName)
    if isinstance(san, x509.SubjectAlternativeName):
        lines.append(f"SAN:      {', '.join(str(n.value) for n in san)}")
    lines.append(f"SHA-256:  {thumbprint_sha256(cert).upper()}")
    return lines


def _chain(args: argparse.Namespace) -> int:
    for i, cert in enumerate(leaf_first(load_certs(args.file))):
        print(f"[{i}] " + "\n    ".join(describe(cert)))
    return 0


def _verify(args: argparse.Namespace) -> int:
    purpose: Literal["server", "client"] = args.purpose or ("server" if args.hostname else "client")
    if purpose == "server" and not args.hostname:
        raise PKIError("--purpose server needs --hostname: a server certificate is only valid for a name")
    if purpose == "client" and args.hostname:
        raise PKIError("--hostname applies to server certificates; drop it or use --purpose server")
    certs = load_certs(args.file)
    extra = load_certs(args.untrusted) if args.untrusted else []
    verdict = verify_chain(certs[0], [*certs[1:], *extra], load_certs(args.ca_file), now=datetime.now(UTC),
                           purpose=purpose, hostname=args.hostname)
    if verdict.ok:
        print(f"{args.file}: OK ({purpose}" + (f" for {args.hostname}" if args.hostname else "") + ")")
        print("chain: " + " <- ".join(c.subject.rfc4514_string() for c in verdict.chain))
        return 0
    print(f"{args.file}: FAILED ({verdict.reason}): {verdict.detail}")
    return 1


def _trust_bundle(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # Quickstart: the stable local root that ensure_quickstart_edge_ca keeps above the Edge CA.
    source = config.trust_bundle_cert or config.state_dir / "pki" / "quickstart-root.pem"
    if not source.exists():
        raise PKIError(f"{source} does not exist yet: run `edgegate run -c {args.config}` once "
                       "(quickstart creates its root on first start)")
    out: Path = args.out
    if out.exists() and not args.force:
        raise PKIError(f"{out} already exists; pass --force to replace it")
    path = Blob(cert_pem(*load_certs(source))).write_to_path(out)
    print(f"wrote {path} (from {source}): give it to child devices as their CA file")
    return 0


# ---- EST -----------------------------------------------------------------------------------------


def _est_enroll(args: argparse.Namespace) -> int:
    from gateway.est.manual import manual_enroll

    pair, slot = manual_enroll(load_config(args.config), args.out, edge_ca=args.edge_ca, url=args.url,
                               common_name=args.common_name, force=args.force)
    print(f"enrolled at {slot.url}: {pair.leaf.subject.rfc4514_string()} issued by "
          f"{pair.leaf.issuer.rfc4514_string()}, valid until {pair.leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    print(f"wrote {slot.store.cert} ({len(pair.chain)} certificate(s), leaf first)")
    print(f"wrote {slot.store.key} (private key, mode 0600)")
    return 0
