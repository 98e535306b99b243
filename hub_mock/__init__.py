"""hub-mock: the IoT Hub stand-in (device registry, HTTPS API for gateways, ingest, C2D, fault switches)."""
