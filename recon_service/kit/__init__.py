"""The kit a backend installs: the client, the callback receiver, and the contract double for its CI.

========================  ===============================================================
``kit.client``            ``ReconClient`` / ``AsyncReconClient`` and their errors
``kit.receiver``          ``CallbackReceiver``: check and parse the service's callbacks
``kit.double``            ``ReconDouble``: the real service in simulate mode, on loopback
``kit.recorder``          ``CallbackRecorder``: the backend's callback endpoints, recording
``kit.pytest_plugin``     the ``recon_double`` and ``callback_recorder`` fixtures
``kit.s3``                ``S3Server``: a real S3 API server (moto) on loopback, for the S3 path
========================  ===============================================================

It depends on the contract (``recon_service.contract``) and nothing else of the service, and
needs only the light install (``pip install recon-service``). The names below can be imported
from here directly (``from recon_service.kit import ReconClient``); they load on first use, so
importing the package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReconClient": "client", "AsyncReconClient": "client", "RetryPolicy": "retry",
    "ReconClientError": "errors", "ReconServiceError": "errors", "ServiceUnreachable": "errors", "WaitTimeout": "errors",
    "InvalidRequest": "errors", "Unauthorized": "errors", "JobNotFound": "errors", "Conflict": "errors",
    "PayloadTooLarge": "errors", "ServerError": "errors",
    "CallbackReceiver": "receiver", "CallbackRejected": "receiver", "ProgressCallbackBody": "receiver",
    "ReconDouble": "double", "CallbackRecorder": "recorder", "RecordedCallback": "recorder",
    "write_jpegs": "photos", "free_port": "ports", "S3Server": "s3",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'recon_service.kit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"recon_service.kit.{_EXPORTS[name]}"), name)
