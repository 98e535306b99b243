"""The offline device cache: the device scope and registered CAs as last told by the hub, persisted
in the gateway's database and served from memory (`DeviceDirectory`)."""
