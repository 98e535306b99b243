"""The front door: TLS termination, authentication at CONNECT and per-packet authorization,
before amqtt sees a single byte."""
