"""Running as a service: resource budget, supervised tasks, systemd notification, health and metrics."""
