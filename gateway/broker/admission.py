"""Defence in depth between the front door and amqtt.

The front door decides who a device is. It then hands amqtt a re-encoded CONNECT whose password is a
one-time admission token; this plugin admits a session only with a live token for that client id.
Nothing but the front door can mint tokens, so no byte that skipped the front door's decision can
open (or take over) an amqtt session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from gateway.broker.amqtt_surface import BaseAuthPlugin, Session


class AdmissionTokens:
    """One-time tokens, each bound to one client id."""

    def __init__(self) -> None:
        self._live: dict[str, str] = {}

    def mint(self, client_id: str) -> str:
        token = secrets.token_urlsafe(18)
        self._live[token] = client_id
        return token

    def redeem(self, token: str | None, client_id: str | None) -> bool:
        if token is None or client_id is None:
            return False
        return self._live.pop(token, None) == client_id

    def revoke(self, token: str) -> None:
        self._live.pop(token, None)


class FrontDoorAuthPlugin(BaseAuthPlugin):
    """amqtt auth plugin: admits exactly the sessions the front door minted a token for."""

    @dataclass
    class Config:
        # The broker's own token book, passed in the broker config (one per gateway, not per process).
        tokens: AdmissionTokens = field(default_factory=AdmissionTokens)

    async def authenticate(self, *, session: Session) -> bool:
        password = session.password
        token = password.decode() if isinstance(password, bytes | bytearray) else password
        config = self.context.config
        admitted = isinstance(config, FrontDoorAuthPlugin.Config) and config.tokens.redeem(token, session.client_id)
        # The token has done its job; keep it out of amqtt's session table.
        session.password = None
        return admitted
