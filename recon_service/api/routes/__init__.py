"""One module of endpoints per resource: ``jobs``, ``options``, ``health``, ``metrics``."""
