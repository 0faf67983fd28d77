"""``dispatch agent``: a per-user process that owns the connection pool.

Scripts and CLI calls of the same user share its pooled, already-authenticated SSH
connections, so a host is logged in to once (one one-time password serves every later
process). The modules here stay light on purpose: `client` and `protocol` import only
the standard library, so a call served by the agent costs no asyncssh import; `server`
(the agent itself) imports the whole API.
"""
