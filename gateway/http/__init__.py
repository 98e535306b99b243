"""HTTP/1.1 over asyncio streams with h11: the hub and EST clients' connections, the health endpoint's server.

h11 does the protocol (framing, keep-alive rules) without touching a socket; these modules only move
bytes, keep the deadlines and the limits, and turn every foreign exception into an HttpError.
"""
