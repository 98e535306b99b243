"""What each HTTP failure becomes for the gateway (gateway.hub.client.transport_error): the same sentences
the hub client has always produced, since operators and tests grep them."""

from __future__ import annotations

import pytest

from gateway.errors import HttpError, HttpFailure, HubRejected, HubUnavailable
from gateway.hub.client import transport_error

WHERE = "https://10.0.0.1:8443 (hub.local)"


@pytest.mark.parametrize(("failure", "error", "sentence"), [
    (HttpError(HttpFailure.UNTRUSTED, "Hostname mismatch, certificate is not valid for 'x'."), HubUnavailable,
     f"the hub at {WHERE} presented a certificate we do not trust: Hostname mismatch, certificate is not valid "
     "for 'x'."),
    (HttpError(HttpFailure.TIMEOUT, "no connection within 5 s"), HubUnavailable,
     f"the hub at {WHERE} did not answer within 12s (down or blackholed?)"),
    (HttpError(HttpFailure.TLS, "SSLError: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"), HubRejected,
     f"the hub at {WHERE} refused the identity certificate of gateway gw-1 in the TLS handshake (unknown ca)"),
    (HttpError(HttpFailure.TLS, "SSLError: tlsv13 alert certificate required"), HubRejected,
     f"the hub at {WHERE} refused the identity certificate of gateway gw-1 in the TLS handshake "
     "(certificate required)"),
    (HttpError(HttpFailure.REFUSED, "ConnectionRefusedError: x"), HubUnavailable,
     f"cannot talk to the hub at {WHERE}: connection refused (nothing listens there: hub down?)"),
    (HttpError(HttpFailure.RESET, "ConnectionResetError: x"), HubUnavailable,
     f"cannot talk to the hub at {WHERE}: connection reset by the hub (if this persists, check that the hub "
     "trusts our identity certificate)"),
    (HttpError(HttpFailure.CLOSED, "the connection was closed before an answer"), HubUnavailable,
     f"cannot talk to the hub at {WHERE}: the connection was closed before an answer"),
    (HttpError(HttpFailure.MALFORMED, "not an HTTP/1.1 answer (x)"), HubUnavailable,
     f"cannot talk to the hub at {WHERE}: not an HTTP/1.1 answer (x)"),
])
def test_hub_transport_error(failure: HttpError, error: type, sentence: str) -> None:
    mapped = transport_error(failure, WHERE, "gw-1", 12.0)
    assert type(mapped) is error
    assert str(mapped) == sentence
