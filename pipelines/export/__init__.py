"""Stage ``export``: the upright, centred GLB the app shows (``glb``) and its thumbnail (``preview``)."""

from pipelines.export.glb import PREVIEW_SIZE, ExportResult, gravity_up, run

__all__ = ["PREVIEW_SIZE", "ExportResult", "gravity_up", "run"]
