"""Stage ``texture``: a UV atlas (``atlas``) and a texture baked from the photos (``bake``, ``blend``)."""

from pipelines.texture.bake import TextureResult, run

__all__ = ["TextureResult", "run"]
