"""GLB files (glTF 2.0 binary): one mesh, one material, written atomically and checked by reading them back.

glTF conventions: +Y up, metres. The base-colour texture is embedded as JPEG (phone downloads stay
small); untextured levels carry vertex colours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ReconstructionFailed
from pipelines.export.lod import Level
from pipelines.files import write_bytes_atomic

JPEG_QUALITY = 90
"""Quality of the base-colour texture embedded in the GLB."""


def read_texture(path: Path | None) -> np.ndarray:
    import cv2

    if path is None or not Path(path).is_file():
        raise ReconstructionFailed("export", f"the texture {path} is missing; rerun the texture stage")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ReconstructionFailed("export", f"cannot read the texture {path}; rerun the texture stage")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def write_glb(path: Path, level: Level) -> Path:
    """One mesh, one material: a base-colour texture (JPEG) or vertex colours; written atomically."""
    import trimesh
    from PIL import Image

    if level.texture is not None and level.uv is not None:
        image = Image.fromarray(level.texture, mode="RGB")
        image.format = "JPEG"  # trimesh embeds images whose format is JPEG as JPEG, others as PNG
        image.encoderinfo = {"quality": JPEG_QUALITY}
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True)
        visual: Any = trimesh.visual.TextureVisuals(uv=level.uv, material=material)
    else:
        rgba = np.concatenate([np.clip(level.colours * 255.0 + 0.5, 0, 255), np.full((len(level.colours), 1), 255.0)], axis=1).astype(np.uint8)
        visual = trimesh.visual.ColorVisuals(vertex_colors=rgba)
    mesh = trimesh.Trimesh(vertices=level.vertices, faces=level.faces, vertex_normals=level.normals, visual=visual, process=False)
    data = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), include_normals=True)
    return write_bytes_atomic(path, data)


def validate_glb(path: Path, num_faces: int, textured: bool) -> None:
    """Reload the GLB and check it holds the mesh (and its texture); remove it and fail otherwise."""
    import trimesh

    problem = None
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
        if len(mesh.faces) != num_faces or not np.all(np.isfinite(mesh.vertices)):
            problem = f"it holds {len(mesh.faces)} faces instead of {num_faces}"
        elif textured:
            image = getattr(getattr(mesh.visual, "material", None), "baseColorTexture", None)
            if image is None or getattr(mesh.visual, "uv", None) is None:
                problem = "its texture did not survive the round trip"
    except Exception as exc:  # any reader error means the file is unusable
        problem = f"trimesh cannot read it back ({type(exc).__name__}: {exc})"
    if problem:
        path.unlink(missing_ok=True)
        raise ReconstructionFailed("export", f"the written {path.name} is invalid: {problem}; rerun with texture.enabled=false and report this job")
