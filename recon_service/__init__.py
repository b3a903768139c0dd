"""recon-service: the HTTP reconstruction service, its job store, workers and callbacks."""

__version__ = "0.1.0"
