"""`edgegate certs`: the certificates of the seed scenario without openssl incantations.

Mirrors IoT Edge's certGen.sh (create_root_and_intermediate, create_edge_device_ca_certificate,
create_device_certificate ...). Every verb prints the files it wrote; keys are written 0600; existing
files are never overwritten without --force.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.config import load_config
from gateway.errors import PKIError
from gateway.pki import (
    CA,
    Blob,
    IssuedCert,
    KeyType,
    colon_form,
    is_self_signed,
    load_certs,
    self_signed_device_cert,
    thumbprint_sha1,
    thumbprint_sha256,
    verify_chain,
)

KEY_TYPES = {"ecdsa-p256": KeyType.ECDSA_P256, "rsa-2048": KeyType.RSA_2048, "rsa-4096": KeyType.RSA_4096}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = subparsers.add_parser("certs", help="create and inspect the certificates of a transparent gateway")
    verbs = certs.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, days: int) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text)
        p.add_argument("--days", type=int, default=days, help=f"validity in days (default {days})")
        p.add_argument("--key-type", choices=sorted(KEY_TYPES), default="ecdsa-p256")
        p.add_argument("--out", type=Path, default=Path("certs"), help="output directory (default ./certs)")
        p.add_argument("--force", action="store_true", help="overwrite existing files")
        return p

    p = verb("create-root-and-intermediate", "root CA and an intermediate CA below it", 3650)
    p.add_argument("--root-cn", default="edgegate Root CA")
    p.add_argument("--intermediate-cn", default="edgegate Intermediate CA")
    p.set_defaults(func=_root_and_intermediate)

    p = verb("create-edge-ca", "an Edge CA (pathlen 0) under the intermediate (or --issuer)", 90)
    p.add_argument("name")
    p.add_argument("--issuer", default="intermediate", help="issuer file prefix in --out (default intermediate)")
    p.set_defaults(func=_edge_ca)

    p = verb("create-server", "the gateway's server cert for HOSTNAME, issued by an Edge CA", 30)
    p.add_argument("hostname")
    p.add_argument("alt_names", nargs="*")
    p.add_argument("--issuer", required=True, help="Edge CA file prefix in --out (as given to create-edge-ca)")
    p.set_defaults(func=_server)

    p = verb("create-device", "a device identity cert: CA-signed (CN = ID) or --self-signed", 365)
    p.add_argument("device_id")
    p.add_argument("--self-signed", action="store_true", help="for thumbprint authentication")
    p.add_argument("--issuer", default="intermediate", help="issuer file prefix in --out (default intermediate)")
    p.set_defaults(func=_device)

    p = verb("create-identity", "the gateway's identity cert, presented to the hub", 365)
    p.add_argument("gateway_id")
    p.add_argument("--issuer", default="intermediate", help="issuer file prefix in --out (default intermediate)")
    p.set_defaults(func=_identity)

    p = verbs.add_parser("thumbprint", help="SHA-256 and SHA-1 thumbprints, colon form and IoT Hub's bare hex")
    p.add_argument("file", type=Path)
    p.set_defaults(func=_thumbprint)

    p = verbs.add_parser("chain", help="show each certificate of a PEM file, leaf first")
    p.add_argument("file", type=Path)
    p.set_defaults(func=_chain)

    p = verbs.add_parser("verify", help="verify a chain against a root; exit 1 when it does not verify")
    p.add_argument("file", type=Path)
    p.add_argument("--ca-file", type=Path, required=True, help="trusted root(s)")
    p.add_argument("--untrusted", type=Path, help="extra intermediates")
    p.add_argument("--hostname", help="for a server cert: the name it must be valid for")
    p.add_argument("--purpose", choices=["server", "client"], default=None)
    p.set_defaults(func=_verify)

    p = verbs.add_parser("trust-bundle", help="export the trust bundle child devices need")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.set_defaults(func=_trust_bundle)


# ---- writing -----------------------------------------------------------------------------------


def _write(out: Path, name: str, blob: Blob, *, private: bool, force: bool) -> Path:
    path = out / name
    if path.exists() and not force:
        raise PKIError(f"{path} exists; pass --force to replace it")
    blob.write_to_path(path, private=private)
    print(f"wrote {path}" + (" (private key, mode 0600)" if private else ""))
    return path


def _load_ca(out: Path, prefix: str) -> CA:
    cert, key = out / f"{prefix}.cert.pem", out / f"{prefix}.key.pem"
    if not cert.exists() or not key.exists():
        raise PKIError(f"issuer {prefix!r} not found: need {cert} and {key} "
                       "(run create-root-and-intermediate or create-edge-ca first)")
    return CA.load(cert, key)


def _write_leaf(args: argparse.Namespace, stem: str, issued: IssuedCert) -> None:
    _write(args.out, f"{stem}.cert.pem", issued.fullchain_pem(), private=False, force=args.force)
    _write(args.out, f"{stem}.key.pem", issued.private_key_pem, private=True, force=args.force)


def _root_and_intermediate(args: argparse.Namespace) -> int:
    kt = KEY_TYPES[args.key_type]
    root = CA.create_root(args.root_cn, days=args.days, key_type=kt, path_length=None)
    inter = root.create_child_ca(args.intermediate_cn, days=args.days, key_type=kt, path_length=1)
    _write(args.out, "root.cert.pem", root.cert_pem, private=False, force=args.force)
    _write(args.out, "root.key.pem", root.private_key_pem, private=True, force=args.force)
    _write(args.out, "intermediate.cert.pem", inter.cert_pem, private=False, force=args.force)
    _write(args.out, "intermediate.key.pem", inter.private_key_pem, private=True, force=args.force)
    _write(args.out, "intermediate.fullchain.pem", Blob(inter.cert_pem.bytes + root.cert_pem.bytes), private=False,
           force=args.force)
    print("give root.cert.pem to child devices: it is the trust bundle")
    return 0


def _edge_ca(args: argparse.Namespace) -> int:
    issuer = _load_ca(args.out, args.issuer)
    edge = issuer.create_child_ca(args.name, days=args.days, key_type=KEY_TYPES[args.key_type], path_length=0)
    chain = Blob(edge.cert_pem.bytes + b"".join(c.public_bytes(_PEM) for c in edge.chain if not is_self_signed(c)))
    _write(args.out, f"{args.name}.cert.pem", chain, private=False, force=args.force)
    _write(args.out, f"{args.name}.key.pem", edge.private_key_pem, private=True, force=args.force)
    print(f"config.toml: [edge_ca] cert = \"{args.out / (args.name + '.cert.pem')}\", "
          f"pk = \"{args.out / (args.name + '.key.pem')}\"")
    return 0


def _server(args: argparse.Namespace) -> int:
    edge = _load_ca(args.out, args.issuer)
    issued = edge.issue_server_cert(args.hostname, *args.alt_names, days=min(args.days, 30),
                                    key_type=KEY_TYPES[args.key_type])
    _write(args.out, f"{args.hostname}.server.cert.pem", issued.fullchain_pem(), private=False, force=args.force)
    _write(args.out, f"{args.hostname}.server.key.pem", issued.private_key_pem, private=True, force=args.force)
    return 0


def _device(args: argparse.Namespace) -> int:
    kt = KEY_TYPES[args.key_type]
    if args.self_signed:
        issued = self_signed_device_cert(args.device_id, days=args.days, key_type=kt)
    else:
        issued = _load_ca(args.out, args.issuer).issue_device_cert(args.device_id, days=args.days, key_type=kt)
    _write_leaf(args, args.device_id, issued)
    if args.self_signed:
        print(f"register with: hub-mock devices add {args.device_id} --parent GATEWAY "
              f"--thumbprint {issued.thumbprint_sha256.upper()}")
    return 0


def _identity(args: argparse.Namespace) -> int:
    issued = _load_ca(args.out, args.issuer).issue_identity_cert(args.gateway_id, days=args.days,
                                                                 key_type=KEY_TYPES[args.key_type])
    _write_leaf(args, f"{args.gateway_id}.identity", issued)
    print(f"identity thumbprint (SHA-256): {issued.thumbprint_sha256.upper()}")
    return 0


# ---- inspecting --------------------------------------------------------------------------------

_PEM = Encoding.PEM


def _thumbprint(args: argparse.Namespace) -> int:
    cert = load_certs(args.file)[0]
    for name, value in (("SHA-256", thumbprint_sha256(cert)), ("SHA-1", thumbprint_sha1(cert))):
        print(f"{name} Fingerprint={colon_form(value).upper()}")
        print(f"{name} (IoT Hub)={value.upper()}")
    return 0


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _chain(args: argparse.Namespace) -> int:
    for i, cert in enumerate(load_certs(args.file)):
        bc = _ext(cert, x509.BasicConstraints)
        eku = _ext(cert, x509.ExtendedKeyUsage)
        san = _ext(cert, x509.SubjectAlternativeName)
        print(f"[{i}] subject: {cert.subject.rfc4514_string()}")
        print(f"    issuer:  {cert.issuer.rfc4514_string()}")
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        print(f"    valid:   {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC")
        if isinstance(bc, x509.BasicConstraints):
            print(f"    CA:      {bc.ca}" + (f", pathlen {bc.path_length}" if bc.path_length is not None else ""))
        if isinstance(eku, x509.ExtendedKeyUsage):
            print(f"    EKU:     {', '.join(o._name for o in eku)}")
        if isinstance(san, x509.SubjectAlternativeName):
            print(f"    SAN:     {', '.join(str(n.value) for n in san)}")
        print(f"    SHA-256: {thumbprint_sha256(cert).upper()}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    certs = load_certs(args.file)
    extra = load_certs(args.untrusted) if args.untrusted else []
    purpose: Literal["server", "client"] = args.purpose or ("server" if args.hostname else "client")
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
    source = config.trust_bundle_cert or config.state_dir / "pki" / "quickstart-root.pem"
    if not source.exists():
        raise PKIError(f"{source} does not exist yet: start the gateway once (quickstart creates its root)")
    blob = Blob(b"".join(c.public_bytes(_PEM) for c in load_certs(source)))
    blob.write_to_path(args.out)
    print(f"wrote {args.out} (from {source}): give it to child devices as their CA file")
    return 0

