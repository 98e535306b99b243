"""The front door's limits: one frozen record, each number with where it comes from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FrontDoorLimits:
    max_connections: int = 10_000
    max_packet_size: int = 256 * 1024  # edgeHub's message size limit
    handshake_timeout: float = 10.0  # TLS handshake + CONNECT
    max_keep_alive: int = 600  # edgeHub caps keep-alive at 10 minutes
    # Unacknowledged QoS 1 publishes one connection may have waiting for the outbox before we stop
    # reading its socket. MQTT clients keep ~20 in flight (paho's default max_inflight); the margin
    # covers `mosquitto_pub -l` bursts. Past it, TCP backpressure slows the device, not our memory.
    max_pending_acks: int = 1000
    # Bytes of accepted payload one connection may have waiting for the outbox commit, QoS 0 included;
    # past it the socket is not read until half of it is committed, so TCP slows a flooding device.
    # 64 KiB is hundreds of telemetry readings per commit (about 30 ms), and keeps a QoS 0 flood from
    # crowding out the event loop: `python -m bench.flood` (2 KiB QoS 0 flood, 20 devices at QoS 1)
    # gave the fleet a PUBACK p99 of 155 ms at 1 MiB, 100 ms at 256 KiB and 70-106 ms at 64 KiB.
    max_pending_bytes: int = 64 * 1024
    # Packets a client may pipeline behind CONNECT before it has its CONNACK (paho sends none).
    max_early_packets: int = 32
    # Topic filters one device may hold. IoT Hub's device dialect needs four (C2D, twin responses,
    # desired patches, methods); a persistent session keeps what it holds, so more is only memory.
    max_subscriptions: int = 32
    # Bytes the open connections may be charged together (gateway.service.budget: each is charged what
    # OpenSSL holds until its handshake is over, then what it keeps); None when no memory limit is known.
    connection_memory: int | None = None

    def keepalive_limit(self, requested: int) -> float:
        """Seconds of silence after which a device is gone: 1.5 x keep-alive (MQTT-3.1.2-24).

        A keep-alive of 0 ("never") or above the cap is held to the cap, so no idle socket lives forever.
        """
        effective = requested if 0 < requested <= self.max_keep_alive else self.max_keep_alive
        return 1.5 * effective
