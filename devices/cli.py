"""`tempsensor`: a TempSensor, or a fleet of them (one process, one selector), publishing through the gateway."""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.x509.oid import NameOID

from devices.events import Events
from devices.fleet import Fleet, FleetSensor
from devices.sensor import Exit, SensorOptions, TempSensor
from devices.tls import device_context
from gateway import __version__
from gateway.errors import PKIError
from gateway.pki import load_certs


def _at_least(minimum: float, kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tempsensor", description="A TempSensor child device for edgegate.")
    p.add_argument("--version", action="version", version=f"tempsensor (edgegate) {__version__}")
    p.add_argument("--gateway-hostname", required=True,
                   help="the gateway's name: its certificate must carry it, and it goes into the username")
    p.add_argument("--connect-address",
                   help="dial this address (an IP, say) instead; the certificate is still checked for the hostname")
    p.add_argument("--port", type=_at_least(1, int), default=8883)
    p.add_argument("--ca-file", type=Path, required=True,
                   help="the trust bundle: the gateway's private root, which is not in the OS store")
    p.add_argument("--cert", type=Path, help="device certificate, PEM; add the intermediates after it")
    p.add_argument("--key", type=Path, help="device private key, PEM")
    p.add_argument("--device-id", help="default: the certificate's CN")
    p.add_argument("--interval", type=_at_least(0, float), default=1.0, help="seconds between readings")
    p.add_argument("--count", type=_at_least(0, int), default=0, help="readings to have acknowledged (0: forever)")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--fleet", type=_at_least(1, int), metavar="N", help="run N sensors from --fleet-dir")
    p.add_argument("--fleet-dir", type=Path, help="directory of ID.cert.pem / ID.key.pem pairs (first N sorted)")
    p.add_argument("--json-log", action="store_true", help="one JSON object per event on stdout")
    p.add_argument("--retry-forever", action="store_true",
                   help="keep dialling even after a refusal that retrying will not fix")
    return p


def fleet_members(names: Iterable[str], n: int) -> list[str]:
    """The device ids of the first `n` `ID.cert.pem` file names, sorted."""
    return sorted(name.removesuffix(".cert.pem") for name in names if name.endswith(".cert.pem"))[:n]


def fleet_exit(results: Iterable[Exit]) -> Exit:
    """A fleet's exit status: the worst of its sensors' (a refusal over a stop over success)."""
    severity = (Exit.OK, Exit.STOPPED, Exit.REFUSED)
    return max(results, key=severity.index, default=Exit.OK)


def _common_name(cert: Path) -> str:
    attrs = load_certs(cert)[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs or not str(attrs[0].value):
        raise PKIError(f"{cert}: the certificate has no CN to take the device id from; pass --device-id")
    return str(attrs[0].value)


def _sensor(args: argparse.Namespace, events: Events, cert: Path, key: Path, device_id: str | None,
            kind: type[TempSensor] = TempSensor) -> TempSensor:
    for path, flag in ((args.ca_file, "--ca-file"), (cert, "--cert"), (key, "--key")):
        if not path.is_file():
            raise PKIError(f"{flag} {path}: no such file")
    context = device_context(args.gateway_hostname, args.ca_file, cert, key)
    options = SensorOptions(
        gateway_hostname=args.gateway_hostname, port=args.port, ca_file=args.ca_file,
        device_id=device_id or _common_name(cert), interval=args.interval, count=args.count, qos=args.qos,
        connect_address=args.connect_address, retry_forever=args.retry_forever,
    )
    return kind(options, context, events)


def _sensors(args: argparse.Namespace, events: Events) -> list[TempSensor]:
    if not args.fleet:
        return [_sensor(args, events, args.cert, args.key, args.device_id)]
    if not args.fleet_dir.is_dir():
        raise PKIError(f"--fleet-dir {args.fleet_dir}: no such directory")
    ids = fleet_members((p.name for p in args.fleet_dir.iterdir()), args.fleet)
    if len(ids) < args.fleet:
        raise PKIError(f"--fleet {args.fleet}: only {len(ids)} ID.cert.pem files in {args.fleet_dir}")
    return [_sensor(args, events, args.fleet_dir / f"{i}.cert.pem", args.fleet_dir / f"{i}.key.pem", i, FleetSensor)
            for i in ids]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.fleet and (args.fleet_dir is None or args.cert or args.key or args.device_id):
        parser.error("--fleet takes its devices from --fleet-dir, and no --cert, --key or --device-id")
    if not args.fleet and (args.cert is None or args.key is None):
        parser.error("--cert and --key are required (or --fleet N with --fleet-dir)")
    events = Events(sys.stdout, as_json=args.json_log)
    try:
        sensors = _sensors(args, events)
    except PKIError as exc:
        print(f"tempsensor: {exc}", file=sys.stderr)
        return Exit.CONFIG
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.fleet:
        return _run_fleet([s for s in sensors if isinstance(s, FleetSensor)], events, stop)
    return sensors[0].run(stop)


def _run_fleet(sensors: list[FleetSensor], events: Events, stop: threading.Event) -> int:
    """All sensors on one selector; the summary (connected, acknowledged, PUBACK latency) at the end."""
    _raise_open_files(len(sensors))
    fleet = Fleet(sensors, events)
    result = fleet_exit(fleet.run(stop))
    summary = fleet.summary()
    if events.as_json:
        events.emit("fleet", "summary", summary.sentence(), sensors=summary.sensors, connected=summary.connected,
                    acked=summary.acked, latency_ms=summary.latency_ms)
    else:
        print(f"tempsensor fleet: {summary.sentence()}", file=sys.stderr)
    return result


def _raise_open_files(sensors: int) -> None:
    """One descriptor per sensor plus a few: raise the soft limit toward the hard one, and say so if short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = sensors + 64
    if soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < want:
            print(f"tempsensor: only {target} open files allowed (hard limit); {sensors} sensors need about {want}: "
                  "raise `ulimit -Hn`", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
