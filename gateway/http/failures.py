"""Which HttpFailure a socket, TLS or h11 exception is: a pure function, table-tested."""

from __future__ import annotations

import errno
import ssl

import h11

from gateway.errors import HttpError, HttpFailure


def classify(exc: BaseException) -> HttpError:
    """The HttpError for an exception raised while connecting, sending or receiving (raise it `from exc`)."""
    detail = f"{exc.__class__.__name__}: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HttpError(HttpFailure.UNTRUSTED, str(exc.verify_message or exc))
    if isinstance(exc, ssl.SSLError):
        return HttpError(HttpFailure.TLS, detail)
    if isinstance(exc, ConnectionRefusedError):
        return HttpError(HttpFailure.REFUSED, detail)
    if isinstance(exc, ConnectionResetError) or (isinstance(exc, OSError) and exc.errno == errno.ECONNRESET):
        return HttpError(HttpFailure.RESET, detail)
    if isinstance(exc, BrokenPipeError | ConnectionAbortedError):
        return HttpError(HttpFailure.CLOSED, detail)
    if isinstance(exc, h11.RemoteProtocolError):
        return HttpError(HttpFailure.MALFORMED, f"not an HTTP/1.1 answer ({exc})")
    return HttpError(HttpFailure.UNREACHABLE, detail)
