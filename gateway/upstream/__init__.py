"""Upstream: device messages out to the hub, cloud-to-device messages in from it."""
