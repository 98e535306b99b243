"""The amqtt broker behind the front door: only authenticated, authorized streams reach it."""
