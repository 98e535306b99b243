"""Benchmarks (not tests): edgegate against plain amqtt 0.12.1 and Mosquitto, same load, same run."""
