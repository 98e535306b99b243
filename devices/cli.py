"""`tempsensor`: a TempSensor (or a fleet of them) publishing readings through the gateway."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from cryptography.x509.oid import NameOID

from devices.sensor import Events, SensorOptions, TempSensor
from gateway.errors import PKIError
from gateway.pki import load_certs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tempsensor", description="A TempSensor child device for edgegate.")
    p.add_argument("--gateway-hostname", required=True, help="the name the gateway's certificate must carry")
    p.add_argument("--connect-address", help="dial this address instead (the hostname is still verified)")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--ca-file", type=Path, required=True,
                   help="the trust bundle: the gateway's private root (not in the OS store)")
    p.add_argument("--cert", type=Path, help="device certificate (PEM, may include intermediates)")
    p.add_argument("--key", type=Path, help="device private key")
    p.add_argument("--device-id", help="defaults to the certificate's CN")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    p.add_argument("--count", type=int, default=0, help="readings to send (0: until stopped)")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--fleet", type=int, default=0, help="run N sensors from --fleet-dir in this process")
    p.add_argument("--fleet-dir", type=Path, help="directory of ID.cert.pem / ID.key.pem pairs")
    p.add_argument("--json-log", action="store_true", help="one JSON object per event on stdout")
    p.add_argument("--retry-forever", action="store_true", help="keep retrying even after an auth refusal")
    return p


def _cn(cert: Path) -> str:
    attrs = load_certs(cert)[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise PKIError(f"{cert}: the certificate has no CN; pass --device-id")
    return str(attrs[0].value)


def _options(args: argparse.Namespace, cert: Path, key: Path, device_id: str | None) -> SensorOptions:
    for path, what in ((args.ca_file, "--ca-file"), (cert, "--cert"), (key, "--key")):
        if not path.is_file():
            raise PKIError(f"{what} {path}: no such file")
    return SensorOptions(
        gateway_hostname=args.gateway_hostname, port=args.port, ca_file=args.ca_file, cert=cert, key=key,
        device_id=device_id or _cn(cert), interval=args.interval, count=args.count, qos=args.qos,
        connect_address=args.connect_address, retry_forever=args.retry_forever,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    events = Events(as_json=args.json_log)
    try:
        if args.fleet:
            if args.fleet_dir is None:
                raise PKIError("--fleet needs --fleet-dir")
            certs = sorted(args.fleet_dir.glob("*.cert.pem"))[: args.fleet]
            if len(certs) < args.fleet:
                raise PKIError(f"--fleet {args.fleet}: only {len(certs)} *.cert.pem files in {args.fleet_dir}")
            options = [_options(args, c, c.with_name(c.name.replace(".cert.pem", ".key.pem")), None) for c in certs]
        else:
            if args.cert is None or args.key is None:
                raise PKIError("--cert and --key are required (or --fleet with --fleet-dir)")
            options = [_options(args, args.cert, args.key, args.device_id)]
    except PKIError as exc:
        print(f"tempsensor: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sensors = [TempSensor(o, events) for o in options]
    results: list[int] = [0] * len(sensors)

    def run(i: int) -> None:
        results[i] = sensors[i].run(stop)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(sensors))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    return max(results)


if __name__ == "__main__":
    sys.exit(main())
