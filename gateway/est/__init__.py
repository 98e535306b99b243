"""EST (RFC 7030): the gateway enrolls and renews its identity cert and its Edge CA.

Pure pieces (no I/O, no clock): `csr` builds PKCS#10 requests, `pkcs7` reads certs-only replies,
`schedule` decides when to renew and when to warn, `issued` checks what came back. The I/O edges:
`client` speaks HTTPS to the EST server, `pairstore` keeps cert/key files (the previous pair stays
until the new one has worked once), `keeper` runs enrollment and renewal inside the gateway.
"""
