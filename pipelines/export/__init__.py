"""Stage ``export``: what the app receives, in metres.

``deliver`` runs the stage (``run``): ``frame`` (up, facing, centring), ``scale`` (metres from the
request, GPS EXIF, or a normalised size), ``glb`` (the full level), ``lod`` (the mobile level, its
texture baked again), ``usdz`` (AR Quick Look) and ``preview`` (the thumbnail).
"""

from pipelines.export.deliver import MODEL_FILES, PREVIEW_SIZE, ExportResult, FileStats, run
from pipelines.export.frame import gravity_up

__all__ = ["MODEL_FILES", "PREVIEW_SIZE", "ExportResult", "FileStats", "gravity_up", "run"]
