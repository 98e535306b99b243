"""Registry sync: the hub client, the sync loop that keeps the device cache current, and its status."""
