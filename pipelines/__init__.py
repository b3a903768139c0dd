"""The reconstruction pipeline: photos → sparse model → dense points → mesh → textured GLB.

Importable and usable without the service: ``from pipelines.run import reconstruct``.
Nothing here imports web code; heavy libraries (pycolmap, open3d) are imported inside the
stage functions that need them.
"""
