"""Child devices: the TempSensor, a paho-mqtt client that publishes readings through the gateway."""
