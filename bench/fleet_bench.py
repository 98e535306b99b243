"""`python -m bench.fleet_bench 5000 [--interval 5] [--seconds 60] [--memory-max 256M] [--cpus 1]`: how many
TempSensors one `tempsensor --fleet` process holds against a real gateway and hub-mock, how fast they connect,
the PUBACK latency percentiles it reports, and whether every acknowledged reading reached the hub. Prints one
JSON object (the figures docs/OPERATIONS.md quotes).

With `--memory-max` / `--cpus` the gateway alone (not the hub, not the fleet) runs in fresh cgroup v1 children
of this process's own cgroups, as `MemoryMax=` / `CPUQuota=` would put it: memory.limit_in_bytes (and
memory.memsw.limit_in_bytes, swappiness 0, so swap cannot hide usage), cpu.cfs_quota_us over a 100 ms period,
and a cpuacct child for its CPU time. They are removed at the end, also when the run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.leanwire import expand
from tests.bigfleet import hub_readings, make_big_fleet
from tests.hubproc import REPO, HubProcess
from tests.serviceproc import ServiceGateway

MIB = 2**20
CFS_PERIOD_US = 100_000
STALLED = 60.0  # no new connection for this long (and not all in): the gateway admits no more
STATUS_EVERY = 1.0  # how often the gateway's status.json is sampled during the run


def memory_size(text: str) -> int:
    """`256M`, `1G`, `512K` or plain bytes (binary units, as systemd's MemoryMax= reads them)."""
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if match is None:
        raise argparse.ArgumentTypeError(f"a size like 256M, 1G or 268435456, not {text!r}")
    return int(match[1]) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match[2]]


# ---- the gateway's cgroups ------------------------------------------------------------------------------


def own_cgroup(controller: str) -> Path:
    """This process's cgroup v1 directory for `controller` (its hierarchy may be co-mounted: `cpu,cpuacct`)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
    raise RuntimeError(f"no cgroup v1 {controller} controller in /proc/self/cgroup")


@dataclass
class GatewayCgroups:
    """The gateway's own cgroup v1 children, one per hierarchy (a co-mounted cpu,cpuacct gets one)."""

    memory: Path | None = None
    cpu: Path | None = None
    cpuacct: Path | None = None
    made: list[Path] = field(default_factory=list)

    def _child(self, controller: str, name: str) -> Path:
        path = own_cgroup(controller) / name
        if path not in self.made:
            path.mkdir()
            self.made.append(path)
        return path

    @classmethod
    @contextlib.contextmanager
    def create(cls, memory_max: int | None, cpus: float | None) -> Iterator[GatewayCgroups]:
        """Fresh children with the limits set; removed (after the gateway has exited) on the way out."""
        groups = cls()
        name = f"edgegate-fleet-bench-{time.monotonic_ns()}"
        try:
            if memory_max is not None:
                groups.memory = groups._child("memory", name)
                (groups.memory / "memory.limit_in_bytes").write_text(str(memory_max))
                # With swap, usage above the limit would be swapped out instead of counted; the machine
                # may have none, but the bench must not depend on that.
                memsw = groups.memory / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    memsw.write_text(str(memory_max))
                (groups.memory / "memory.swappiness").write_text("0")
            if cpus is not None:
                groups.cpu = groups._child("cpu", name)
                (groups.cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                (groups.cpu / "cpu.cfs_quota_us").write_text(str(round(cpus * CFS_PERIOD_US)))
            if memory_max is not None or cpus is not None:
                groups.cpuacct = groups._child("cpuacct", name)
            yield groups
        finally:
            groups.remove()

    def join_prefix(self) -> tuple[str, ...]:
        """A command prefix that moves the process into every child, then execs the command."""
        if not self.made:
            return ()
        joins = " && ".join(f"echo $$ > {path / 'cgroup.procs'}" for path in self.made)
        return ("sh", "-c", f'{joins} && exec "$@"', "sh")

    def cpu_seconds(self) -> float | None:
        if self.cpuacct is None:
            return None
        return int((self.cpuacct / "cpuacct.usage").read_text()) / 1e9

    def figures(self) -> dict[str, object]:
        cpu = self.cpu_seconds()
        out: dict[str, object] = {"cpu_seconds": cpu and round(cpu, 1)}
        if self.memory is not None:
            m = self.memory
            oom = dict(line.split() for line in (m / "memory.oom_control").read_text().splitlines())
            out |= {
                "memory_limit_mib": int((m / "memory.limit_in_bytes").read_text()) / MIB,
                "memory_max_usage_mib": round(int((m / "memory.max_usage_in_bytes").read_text()) / MIB, 1),
                "memory_failcnt": int((m / "memory.failcnt").read_text()),
                "under_oom": int(oom["under_oom"]),
                "oom_kill": int(oom.get("oom_kill", "0")),
            }
            if (m / "memory.memsw.failcnt").exists():
                out["memsw_failcnt"] = int((m / "memory.memsw.failcnt").read_text())
        if self.cpu is not None:
            stat = dict(line.split() for line in (self.cpu / "cpu.stat").read_text().splitlines())
            out |= {"cpu_quota": int((self.cpu / "cpu.cfs_quota_us").read_text()) / CFS_PERIOD_US,
                    "throttled_periods": int(stat["nr_throttled"]),
                    "throttled_seconds": round(int(stat["throttled_time"]) / 1e9, 1)}
        return out

    def remove(self) -> None:
        """rmdir each child; an exiting process can hold one for a moment, so retry briefly."""
        for path in reversed(self.made):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                print(f"fleet_bench: could not remove {path}", file=sys.stderr)
        self.made.clear()


# ---- the load, as its JSON events tell it -------------------------------------------------------------


class LoadWatch(ABC):
    """A load generator process and what it reported: devices connected, acked readings (seq per device),
    events and failure reasons by kind. The two loads below report the same figures in different ways."""

    sent_count: int | None = None  # readings published, where the load counts them
    behind: int | None = None  # readings due while the device's window was full

    def __init__(self, command: list[str]) -> None:
        self.connected_count = 0  # devices that connected at least once
        self.acked: dict[str, list[int]] = defaultdict(list)
        self.acked_count = 0
        self.events: dict[str, int] = defaultdict(int)  # event name -> how many
        self.reasons: dict[str, int] = defaultdict(int)  # failure reason -> how many
        self.last_connected_at = time.monotonic()
        self.summary: dict[str, object] = {}
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._event(json.loads(line))

    @abstractmethod
    def _event(self, event: dict[str, object]) -> None:
        """One JSON line of the load's output (each load speaks its own)."""

    def _finish(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Called once the process has exited and its output is read."""

    def stop(self) -> None:
        """SIGINT (the load disconnects cleanly and prints its summary), then read to the end."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(60)
        self._finish()


class FleetWatch(LoadWatch):
    """`tempsensor --fleet N --json-log`: paho TempSensors, one JSON line per event and per acked reading."""

    def __init__(self, gw: ServiceGateway, fleet_dir: Path, sensors: int, interval: float) -> None:
        self.connected: set[str] = set()
        super().__init__(
            [sys.executable, "-m", "devices.cli", "--gateway-hostname", "edgegateway.local", "--connect-address",
             "127.0.0.1", "--port", str(gw.port), "--ca-file", str(gw.root), "--fleet", str(sensors),
             "--fleet-dir", str(fleet_dir), "--interval", str(interval), "--json-log"])

    def _event(self, event: dict[str, object]) -> None:
        kind, device = str(event["event"]), str(event["device"])
        self.events[kind] += 1
        if kind == "acked":
            self.acked[device].append(int(str(event["seq"])))
            self.acked_count += 1
        elif kind == "connected":
            if device not in self.connected:
                self.last_connected_at = time.monotonic()
            self.connected.add(device)
            self.connected_count = len(self.connected)
        elif kind == "summary":
            self.summary = event
        elif "reason" in event:
            self.reasons[f"{kind}:{event['reason']}"] += 1


class LeanWatch(LoadWatch):
    """`python -m bench.leanload`: counts once a second, the acked seqs as ranges in a file at the end."""

    def __init__(self, gw: ServiceGateway, fleet_dir: Path, sensors: int, interval: float, pad: int = 0) -> None:
        self.acks_file = fleet_dir.parent / "lean-acks.json"
        self.sent_count = self.behind = 0
        super().__init__(
            [sys.executable, "-m", "bench.leanload", "--gateway-hostname", "edgegateway.local", "--connect-address",
             "127.0.0.1", "--port", str(gw.port), "--ca-file", str(gw.root), "--fleet", str(sensors),
             "--fleet-dir", str(fleet_dir), "--interval", str(interval), "--acks-file", str(self.acks_file),
             "--pad", str(pad)])

    def _event(self, event: dict[str, object]) -> None:
        if event["event"] == "summary":
            self.summary = event
        ever = int(str(event["ever_connected"]))
        if ever > self.connected_count:
            self.last_connected_at = time.monotonic() - float(str(event["since_last_new"]))
        self.connected_count = ever
        self.acked_count = int(str(event["acked"]))
        self.sent_count, self.behind = int(str(event["sent"])), int(str(event["behind"]))
        failures = event["failures"]
        assert isinstance(failures, dict)
        self.reasons = defaultdict(int, failures)
        self.events["connected"] = int(str(event["connects"]))
        self.events["disconnected"] = int(str(event["disconnects"]))
        self.events["refused"] = sum(n for reason, n in failures.items() if reason.startswith("connack:"))
        self.events["connect_failed"] = sum(n for reason, n in failures.items()
                                            if not reason.startswith(("connack:", "lost:")))
        self.events["acked"] = self.acked_count

    def _finish(self) -> None:
        if not self.acks_file.exists():
            return
        ranges = json.loads(self.acks_file.read_text())
        self.acked = defaultdict(list, {device: list(expand(r)) for device, r in ranges.items()})
        self.acked_count = self.events["acked"] = sum(len(seqs) for seqs in self.acked.values())


LOADS = ("lean", "tempsensor")


def start_load(kind: str, gw: ServiceGateway, fleet_dir: Path, sensors: int, interval: float,
               pad: int = 0) -> LoadWatch:
    if kind == "lean":
        return LeanWatch(gw, fleet_dir, sensors, interval, pad)
    if pad:
        raise SystemExit("--pad needs --load lean")
    return FleetWatch(gw, fleet_dir, sensors, interval)


# ---- the run ------------------------------------------------------------------------------------------------


class GatewayWatch:
    """The gateway as its status.json and /proc show it, sampled through the run."""

    def __init__(self, gw: ServiceGateway, memory_cgroup: Path | None = None, trace: Path | None = None) -> None:
        self.gw = gw
        self.memory_cgroup = memory_cgroup
        self.trace = trace  # one JSON line a sample: the time series behind the peaks
        self.phase = "sync"
        self.started = time.monotonic()
        self.connected = self.connected_max = self.cached = self.refused = self.refused_memory = 0
        self.refused_pressure = self.shed = 0  # refused, disconnected by gateway.service.memory_guard
        self.pressure_steps: dict[str, int] = {}  # edgegate_memory_pressure_total by level
        self.outbox_depth = -1
        self.limits: dict[str, object] = {}
        # Peaks of what must fit: the process's anonymous memory, and the cgroup's anonymous (rss) and page
        # cache (which the kernel reclaims before it fails a charge) at the moment anon peaked.
        self.anon_peak = self.cgroup_rss_peak = self.cgroup_cache_at_rss_peak = 0

    def sample(self) -> None:
        try:
            status = self.gw.status()
        except (OSError, ValueError):
            return  # not written yet, or caught mid-rename
        sync, counters, limits = status.get("sync"), status.get("counters"), status.get("limits")
        assert isinstance(sync, dict)
        assert isinstance(counters, dict)
        assert isinstance(limits, dict)
        self.connected = int(str(status["connected_devices"]))
        self.connected_max = max(self.connected_max, self.connected)
        self.cached = int(sync.get("cached_devices") or 0)
        self.refused = int(counters.get('edgegate_connections_refused_total{reason="max_connections"}', 0))
        self.refused_memory = int(counters.get('edgegate_connections_refused_total{reason="memory"}', 0))
        self.refused_pressure = int(counters.get('edgegate_connections_refused_total{reason="memory_pressure"}', 0))
        self.pressure_steps = {level: int(counters.get(f'edgegate_memory_pressure_total{{level="{level}"}}', 0))
                               for level in ("refusing", "holding")}
        self.shed = int(counters.get("edgegate_memory_shed_total", 0))
        self.outbox_depth = int(str(status["outbox_depth"]))
        self.limits = limits
        anon, cgroup_rss, cgroup_cache = self._sample_memory()
        if self.trace is not None:
            holds = counters.get("edgegate_read_holds_total", 0)
            with self.trace.open("a") as f:
                f.write(json.dumps({"t": round(time.monotonic() - self.started, 1), "phase": self.phase,
                                    "connected": self.connected, "outbox_depth": self.outbox_depth,
                                    "anon_mib": anon and round(anon / MIB, 1),
                                    "cgroup_rss_mib": cgroup_rss and round(cgroup_rss / MIB, 1),
                                    "cgroup_cache_mib": cgroup_cache and round(cgroup_cache / MIB, 1),
                                    "read_holds": holds,
                                    "pressure": (status.get("memory") or {}).get("pressure")}) + "\n")

    def _sample_memory(self) -> tuple[int | None, int | None, int | None]:
        """(the process's anonymous memory, the cgroup's rss and cache), each None where unknown."""
        assert self.gw.proc is not None
        anon = rss = cache = None
        try:
            proc_status = Path(f"/proc/{self.gw.proc.pid}/status").read_text()
            anon = next(int(line.split()[1]) * 1024 for line in proc_status.splitlines() if line.startswith("RssAnon:"))
            self.anon_peak = max(self.anon_peak, anon)
            if self.memory_cgroup is not None:
                stat = dict(line.split() for line in (self.memory_cgroup / "memory.stat").read_text().splitlines())
                rss, cache = int(stat["rss"]), int(stat["cache"])
                if rss > self.cgroup_rss_peak:
                    self.cgroup_rss_peak, self.cgroup_cache_at_rss_peak = rss, cache
        except (OSError, StopIteration, KeyError, ValueError):
            return anon, rss, cache  # the process or its cgroup went away mid-read: what was read so far
        return anon, rss, cache

    def memory_peaks(self) -> dict[str, float]:
        return {"anon_rss_peak_mib": round(self.anon_peak / MIB, 1),
                "cgroup_rss_peak_mib": round(self.cgroup_rss_peak / MIB, 1),
                "cgroup_cache_at_rss_peak_mib": round(self.cgroup_cache_at_rss_peak / MIB, 1)}

    def alive(self) -> bool:
        return self.gw.proc is not None and self.gw.proc.poll() is None

    def rss(self) -> tuple[float | None, float | None]:
        """(RSS, peak RSS = VmHWM) in MiB; None once the process is gone."""
        assert self.gw.proc is not None
        try:
            status = Path(f"/proc/{self.gw.proc.pid}/status").read_text()
            rss = psutil.Process(self.gw.proc.pid).memory_info().rss
        except (OSError, psutil.Error):
            return None, None
        hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        return round(rss / MIB, 1), round(hwm / MIB, 1)


class CpuWatch:
    """CPU used from now on by the gateway (its cpuacct cgroup, else the process), the fleet, the hub,
    this bench, and the whole machine: who the limit was, in percent of one CPU."""

    def __init__(self, cgroups: GatewayCgroups, **pids: int | None) -> None:
        self.cgroups = cgroups
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid is not None}
        self.procs["bench"] = psutil.Process()
        self.started = time.monotonic()
        self.last: dict[str, float] = {}
        self.before = self._seconds()

    def _seconds(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                out[name] = self.last[name] = sum(proc.cpu_times()[:2])
            except psutil.Error:  # gone (an OOM kill, say): its last reading, so the run still reports
                out[name] = self.last.get(name, 0.0)
        out["gateway"] = self.cgroups.cpu_seconds() or out.get("gateway", 0.0)
        machine = psutil.cpu_times()
        out["machine"] = sum(machine) - machine.idle - machine.iowait
        return out

    def used(self) -> tuple[float, dict[str, float]]:
        """(seconds elapsed, CPU seconds each used) since the start."""
        now = self._seconds()
        return time.monotonic() - self.started, {name: now[name] - self.before[name] for name in now}


def per_reading(cpu_seconds: dict[str, float], readings: int) -> dict[str, float | None]:
    """The load's and the gateway's CPU microseconds per acknowledged reading."""
    return {f"{name}_cpu_us_per_reading": round(1e6 * cpu_seconds[name] / readings) if readings else None
            for name in ("fleet", "gateway")}


def log_trouble(log: str) -> dict[str, object]:
    """ERROR lines and exceptions in the gateway's log, counted by kind (addresses dropped)."""
    errors = [line for line in log.splitlines() if " ERROR " in line or re.match(r"\w+(Error|Exception): ", line)]
    kinds: dict[str, int] = defaultdict(int)
    for line in errors:
        kinds[re.sub(r"^\S+Z |0x[0-9a-f]+", "", line)[:200]] += 1
    return {"error_lines": len(errors), "tracebacks": log.count("Traceback"), "errors": dict(kinds),
            "hub_unreachable_warnings": log.count("hub unreachable")}


def budget_line(log: str) -> str | None:
    """The gateway's 'max_connections ... fits' / 'capped ... by memory' sentence from its start."""
    return next((line.strip() for line in log.splitlines() if "max_connections" in line and
                 (" fits: " in line or "capped from" in line)), None)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    out: dict[str, object] = {"load": args.load, "sensors": args.sensors, "interval": args.interval, "pad": args.pad,
                              "seconds": args.seconds,
                              "memory_max_mib": args.memory_max and args.memory_max / MIB, "cpus": args.cpus}
    gateway: dict[str, object] = {}
    with HubProcess.start(tmp / "hub") as hub, GatewayCgroups.create(args.memory_max, args.cpus) as cgroups:
        gw = ServiceGateway.launch(tmp / "gw", hub, prefix=cgroups.join_prefix(), args=("--log-level", "INFO"))
        watch = GatewayWatch(gw, cgroups.memory, args.trace)
        fleet: LoadWatch | None = None
        try:
            make_big_fleet(hub, tmp / "fleet", args.sensors)
            while watch.cached != args.sensors:
                if not watch.alive():
                    raise RuntimeError(f"the gateway exited while syncing:\n{gw.log()[-3000:]}")
                time.sleep(0.5)
                watch.sample()

            # Connect: until all are in, the gateway stops admitting (no new one for STALLED s), or the deadline.
            started, watch.phase = time.monotonic(), "connect"
            fleet = start_load(args.load, gw, tmp / "fleet", args.sensors, args.interval, args.pad)
            ended = "all connected"
            while fleet.connected_count < args.sensors:
                now = time.monotonic()
                if fleet.proc.poll() is not None:
                    ended = f"the fleet exited ({fleet.proc.returncode})"
                elif not watch.alive():
                    ended = "the gateway exited"
                elif now - started > args.connect_deadline:
                    ended = f"deadline ({args.connect_deadline:g} s)"
                elif fleet.connected_count and now - fleet.last_connected_at > STALLED:
                    ended = f"stalled: no new connection for {STALLED:g} s"
                else:
                    time.sleep(STATUS_EVERY)
                    watch.sample()
                    continue
                break
            to_last = round(fleet.last_connected_at - started, 1)
            caught_up = time.monotonic() + 3 * STATUS_EVERY + 2  # status.json is rewritten every 2 s
            while watch.connected != fleet.connected_count and time.monotonic() < caught_up:
                time.sleep(0.5)
                watch.sample()
            out["connected"] = fleet.connected_count
            out["seconds_to_connect_all"] = to_last if fleet.connected_count == args.sensors else None
            out["connect"] = {"ended": ended, "seconds_to_last_connection": to_last,
                              "seconds_waited": round(time.monotonic() - started, 1),
                              "fleet_connected": fleet.connected_count,
                              "gateway_connected": watch.connected, "gateway_refused_max_connections": watch.refused,
                              "gateway_refused_memory": watch.refused_memory,
                              "gateway_refused_memory_pressure": watch.refused_pressure}

            # The window: every connected sensor publishes once per interval; count at both ends.
            acked_before, hub_before = fleet.acked_count, hub.admin.messages(None, limit=1)["total"]
            # (A gateway the kernel killed while the fleet connected has no CPU to watch; the rest still counts.)
            cpu = CpuWatch(cgroups, fleet=fleet.proc.pid, hub=hub.proc.pid if hub.proc else None,
                           gateway=gw.proc.pid if gw.proc and watch.alive() else None)
            disconnects_before = fleet.events["disconnected"]
            sent_before, behind_before = fleet.sent_count, fleet.behind
            window_end, watch.phase = time.monotonic() + args.seconds, "window"
            gateway_connected = [watch.connected]
            while time.monotonic() < window_end and watch.alive():
                time.sleep(STATUS_EVERY)
                watch.sample()
                gateway_connected.append(watch.connected)
            elapsed, cpu_seconds = cpu.used()
            acked_in_window = fleet.acked_count - acked_before
            # Offered beside acknowledged, and each side's CPU per reading: which of the two was the limit.
            # (The lean load counts once a second, so its figures are good to about a second of readings.)
            offered = None if fleet.sent_count is None or sent_before is None else fleet.sent_count - sent_before
            out["window"] = {
                "expected_readings": round(fleet.connected_count * args.seconds / args.interval),
                "acked": acked_in_window,
                "hub_received": hub.admin.messages(None, limit=1)["total"] - hub_before,
                "acked_per_second": round(acked_in_window / args.seconds),
                "offered_per_second": None if offered is None else round(offered / elapsed),
                "fleet_behind": None if fleet.behind is None or behind_before is None else fleet.behind - behind_before,
                "gateway_connected_min": min(gateway_connected), "gateway_connected_max": max(gateway_connected),
                "fleet_disconnects": fleet.events["disconnected"] - disconnects_before,
                "cpu_percent": {name: round(100 * used / elapsed) for name, used in cpu_seconds.items()},
                **per_reading(cpu_seconds, acked_in_window),
            }
            fleet_proc = psutil.Process(fleet.proc.pid)
            fleet_rss, fleet_cpu = fleet_proc.memory_info().rss, sum(fleet_proc.cpu_times()[:2])
            gateway_rss, gateway_peak_rss = watch.rss()
            gateway_cpu = cgroups.cpu_seconds()
            gateway["alive_after_window"] = watch.alive()
            fleet.stop()
            watch.phase = "drain"

            # Drain: the outbox is empty and the hub's count stands still; then every acked reading is looked up.
            drain_started, hub_total = time.monotonic(), -1
            while time.monotonic() - drain_started < args.drain and watch.alive():
                time.sleep(2 * STATUS_EVERY)  # status.json is rewritten every 2 s
                watch.sample()
                hub_total, before = hub.admin.messages(None, limit=1)["total"], hub_total
                if watch.outbox_depth == 0 and hub_total == before:
                    break
            at_hub = {device: set(seqs) for device, seqs in hub_readings(hub).items()}
            lost = {device: sorted(set(seqs) - at_hub.get(device, set())) for device, seqs in fleet.acked.items()}
            lost = {device: seqs for device, seqs in lost.items() if seqs}
            out["delivery"] = {
                "acked_total": fleet.acked_count, "at_hub_total": sum(len(s) for s in at_hub.values()),
                "lost": sum(len(s) for s in lost.values()), "lost_examples": dict(list(lost.items())[:5]),
                "drain_seconds": round(time.monotonic() - drain_started, 1), "outbox_depth_after": watch.outbox_depth,
            }
            failures = ("connect_failed", "refused", "disconnected")
            out["connection_failures"] = sum(fleet.events[kind] for kind in failures)
            out["fleet_rss_mib"] = round(fleet_rss / MIB, 1)
            out["gateway_rss_mib"] = gateway_rss
            out["summary"] = fleet.summary.get("message")
            gateway |= {
                "rss_mib": gateway_rss, "peak_rss_mib": gateway_peak_rss, **watch.memory_peaks(),
                "memory_pressure_steps": watch.pressure_steps, "refused_memory_pressure": watch.refused_pressure,
                "memory_shed": watch.shed,
                "cpu_seconds_to_window_end": gateway_cpu and round(gateway_cpu, 1),
                "connected_max": watch.connected_max, "max_connections": watch.limits.get("max_connections"),
                "limited_by": watch.limits.get("limited_by"), "budget_log_line": budget_line(gw.log()),
                **log_trouble(gw.log()),
            }
            out["fleet"] = {"cpu_seconds": round(fleet_cpu, 1), "exit_status": fleet.proc.returncode,
                            "events": dict(fleet.events), "failure_reasons": dict(fleet.reasons),
                            "reported": {k: v for k, v in fleet.summary.items()
                                         if k not in ("device", "event", "message")}}
        finally:
            if fleet is not None:
                fleet.stop()
            gateway["exit_status"] = gw.stop()
        out["gateway"] = gateway
        out["cgroup"] = cgroups.figures()
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_bench")
    p.add_argument("sensors", type=int)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between readings per sensor")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to publish once all are connected")
    p.add_argument("--memory-max", type=memory_size, help="the gateway's cgroup memory limit, e.g. 256M")
    p.add_argument("--cpus", type=float, help="the gateway's CPU quota in CPUs, e.g. 1")
    p.add_argument("--connect-deadline", type=float, default=900.0, help="seconds allowed to connect the fleet")
    p.add_argument("--drain", type=float, default=120.0, help="seconds allowed for the outbox to drain after")
    p.add_argument("--load", choices=LOADS, default="lean",
                   help="lean (the default): bench/leanload.py, one uvloop process at ~75 µs per reading, which can "
                        "offer 5,000 readings/s from the core the gateway does not use; tempsensor: paho "
                        "TempSensors (~270 µs per reading: ~3,000/s from one core)")
    p.add_argument("--trace", type=Path, help="append one JSON line per status sample to this file (memory, "
                                              "outbox depth, connections, holds over time)")
    p.add_argument("--pad", type=int, default=0, help="bytes of padding added to each reading (--load lean): "
                                                      "bigger readings, more memory in flight per device")
    args = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the fleet, the gateway, the hub and the cgroups are still cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    print(json.dumps(run(args, tmp), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
