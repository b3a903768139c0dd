"""Stage ``ingest``: the user's photos in, upright working JPEGs of bounded size out."""

from pipelines.ingest.working_images import IngestedPhoto, IngestResult, SkippedPhoto, register_heif, run

__all__ = ["IngestResult", "IngestedPhoto", "SkippedPhoto", "register_heif", "run"]
