"""What a SIGHUP can apply to a running gateway, and what needs a restart (pure, over two Configs)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Config

# Applied live: the log level, the front door's limits (for new connections), the server certificate
# and the Edge CA it comes from (re-read from disk; new connections get the new chain, connected devices
# stay), and the trust bundle (the anchors new device chains are checked against).
LIVE = ("log.level", "limits", "edge_ca", "trust_bundle_cert", "alt_names", "auth")
# Everything else is wired once at start: sockets, the database, the hub link, the outbox's bounds.
RESTART = ("hostname", "state_dir", "listener", "hub", "sync", "outbox", "storage", "health", "log.format")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    live: tuple[str, ...]  # changed settings that are applied now
    restart: tuple[str, ...]  # changed settings that take effect only after a restart

    def sentence(self) -> str:
        applied = ", ".join(self.live) if self.live else "no setting changed"
        text = f"reloaded config and certificates: applied {applied}"
        if self.restart:
            text += f"; changed but needs a restart (systemctl restart edgegate): {', '.join(self.restart)}"
        return text


def _value(config: Config, key: str) -> object:
    value: object = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def reload_plan(old: Config, new: Config) -> ReloadPlan:
    """Which changed settings a reload applies and which wait for a restart."""
    return ReloadPlan(
        live=tuple(k for k in LIVE if _value(old, k) != _value(new, k)),
        restart=tuple(k for k in RESTART if _value(old, k) != _value(new, k)),
    )
