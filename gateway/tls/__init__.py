"""TLS for the gateway: the one place that builds SSL contexts, and TLS driven over memory buffers."""
