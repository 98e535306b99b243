"""The durable outbox: device messages stored before their PUBACK, forwarded to the hub in order."""
