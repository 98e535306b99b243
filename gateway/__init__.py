"""edgegate: an MQTT gateway broker that stands in for Azure IoT Edge's edgeHub."""

__version__ = "0.1.0"
