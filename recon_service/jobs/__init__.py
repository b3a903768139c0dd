"""Jobs: the store (and its migrations), the executors, the job runner, the callback outbox, retention.

Nothing here speaks HTTP: the API (``recon_service.api``) calls into this room, never the reverse.
"""
