"""The systemd unit, rendered for this installation: where the `edgegate` command is, which config, which
state dir, which user (pure; `edgegate install-service` writes it)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

TEMPLATE = "edgegate.service"
DEFAULT_COMMAND = "/usr/local/bin/edgegate"
DEFAULT_CONFIG = "/etc/edgegate/config.toml"
DEFAULT_STATE_DIR = "/var/lib/edgegate"
DEFAULT_USER = "edgegate"


@dataclass(frozen=True, slots=True)
class UnitSettings:
    command: Path
    config: Path
    state_dir: Path
    user: str = DEFAULT_USER


def template() -> str:
    return resources.files("gateway.service").joinpath(TEMPLATE).read_text()


def render(settings: UnitSettings, text: str | None = None) -> str:
    """The packaged unit with this installation's paths and user."""
    text = template() if text is None else text
    text = text.replace(f"ExecStart={DEFAULT_COMMAND} run -c {DEFAULT_CONFIG}",
                        f"ExecStart={settings.command} run -c {settings.config}")
    text = text.replace(f"ReadWritePaths={DEFAULT_STATE_DIR}", f"ReadWritePaths={settings.state_dir}")
    text = text.replace(f"User={DEFAULT_USER}\nGroup={DEFAULT_USER}", f"User={settings.user}\nGroup={settings.user}")
    if str(settings.state_dir) != DEFAULT_STATE_DIR:
        # StateDirectory= makes /var/lib/edgegate; a state dir elsewhere is the operator's to create.
        text = text.replace("StateDirectory=edgegate\nStateDirectoryMode=0700\n", "")
    return text
