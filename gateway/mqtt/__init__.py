"""MQTT 3.1.1 on bytes: framing, decoding what devices send, encoding what we answer. No I/O."""
