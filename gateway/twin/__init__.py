"""Device twins and direct methods for child devices: cache, durable reported-patch queue, routing."""
