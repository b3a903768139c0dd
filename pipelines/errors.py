"""The few named errors of the reconstruction pipeline.

Every failure a user can see is one of these; the service maps them to job messages and HTTP
answers in one place (``recon_service.jobs``), the CLI to exit codes (``recon_service.cli``).
Messages are written for the person holding the photos: they say what to do next.
"""

from __future__ import annotations


class ReconError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InvalidInput(ReconError):
    """The photos or the options cannot be used as given (the user must change them)."""


class InvalidOptions(InvalidInput):
    """An option key or value is not valid; ``key`` names the offending option."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"option {key!r}: {problem}")


class ReconstructionFailed(ReconError):
    """A stage ran but could not produce a usable result from these photos."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        self.message = message
        super().__init__(f"{stage}: {message}")


class Cancelled(ReconError):
    """The run was cancelled on request; not a failure of the photos or the pipeline."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)
