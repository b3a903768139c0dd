"""A thumbnail of a (textured) mesh by ray casting with Open3D, no GPU or display needed.

Coordinates are the model's own (glTF: Y up). The camera looks at the centre of the bounding box
from a 3/4 view (front-right, from above) and is placed so the bounding sphere fills the view.
"""

from __future__ import annotations

import math

import numpy as np

BACKGROUND = (245, 245, 245)
"""RGB of pixels that see no surface."""


def render(
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    uv: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    vertex_colors: np.ndarray | None = None,
    size: int = 512,
    azimuth_deg: float = 35.0,
    elevation_deg: float = 25.0,
    fov_deg: float = 40.0,
    up: np.ndarray | None = None,
    frame: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Render an RGB image (size, size, 3) uint8 of the mesh.

    ``vertices`` (V, 3) and ``faces`` (F, 3); colour from ``texture`` (H, W, 3 uint8) sampled at
    per-vertex ``uv`` (V, 2; OpenGL convention, v = 0 at the image's bottom row), else from
    ``vertex_colors`` (V, 3, 0..1), else grey. The view direction is given by azimuth (from +Z
    towards +X) and elevation above the XZ plane, around ``up`` (default +Y). ``frame`` (min and
    max corners) is the box the view is fitted to; by default the whole mesh.
    """
    import open3d as o3d

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    up = np.array([0.0, 1.0, 0.0]) if up is None else np.asarray(up, dtype=np.float64)
    lo, hi = frame if frame is not None else (vertices.min(axis=0), vertices.max(axis=0))
    centre = (lo + hi) / 2
    radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-9)
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    direction = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])  # towards the eye
    direction = _rotation_y_to(up) @ direction
    distance = radius / math.sin(math.radians(fov_deg) / 2)
    eye = centre + direction * distance

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    ray_dir = _pinhole_rays(eye, centre, up, fov_deg, size)
    rays = o3d.core.Tensor(np.concatenate([np.broadcast_to(eye, ray_dir.shape), ray_dir], axis=1).astype(np.float32))
    hit = scene.cast_rays(rays)
    t_hit = hit["t_hit"].numpy().reshape(-1)
    prim = hit["primitive_ids"].numpy().reshape(-1)
    bary_uv = hit["primitive_uvs"].numpy().reshape(-1, 2)
    normal = hit["primitive_normals"].numpy().reshape(-1, 3).astype(np.float64)

    image = np.empty((size * size, 3), dtype=np.float64)
    image[:] = np.asarray(BACKGROUND) / 255.0
    ok = np.isfinite(t_hit)
    if ok.any():
        f = faces[prim[ok]]
        w = np.stack([1.0 - bary_uv[ok, 0] - bary_uv[ok, 1], bary_uv[ok, 0], bary_uv[ok, 1]], axis=1)
        if texture is not None and uv is not None:
            tex_uv = np.einsum("ij,ijk->ik", w, np.asarray(uv)[f])
            albedo = sample_texture(texture, tex_uv)
        elif vertex_colors is not None:
            albedo = np.einsum("ij,ijk->ik", w, np.asarray(vertex_colors, dtype=np.float64)[f])
        else:
            albedo = np.full((int(ok.sum()), 3), 0.7)
        n = normal[ok]
        n *= np.where(np.sum(n * ray_dir[ok], axis=1) > 0, -1.0, 1.0)[:, None]  # two-sided
        light = _unit(-ray_dir[ok] + 0.6 * up)  # a head light, a little from above
        shade = 0.45 + 0.55 * np.clip(np.sum(n * light, axis=1), 0.0, 1.0)
        image[ok] = albedo * shade[:, None]
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(size, size, 3)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup: RGB in 0..1 (N, 3) at OpenGL-convention ``uv`` (N, 2)."""
    import cv2

    h, w = texture.shape[:2]
    x = (uv[:, 0] * w - 0.5).astype(np.float32)
    y = ((1.0 - uv[:, 1]) * h - 0.5).astype(np.float32)
    n = len(x)
    cols = 4096
    rows = -(-n // cols)
    pad = rows * cols - n
    mx = np.pad(x, (0, pad)).reshape(rows, cols)
    my = np.pad(y, (0, pad)).reshape(rows, cols)
    out = cv2.remap(texture, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, texture.shape[2])[:n, :3].astype(np.float64) / 255.0


def _pinhole_rays(eye: np.ndarray, target: np.ndarray, up: np.ndarray, fov_deg: float, size: int) -> np.ndarray:
    """Unit ray directions (size*size, 3), row-major from the top-left pixel, of a square pinhole view."""
    forward = _unit(target - eye)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:  # looking along ``up``: any perpendicular will do
        right = np.cross(forward, [1.0, 0.0, 0.0] if abs(forward[0]) < 0.9 else [0.0, 0.0, 1.0])
    right = _unit(right)
    down = np.cross(forward, right)
    half = math.tan(math.radians(fov_deg) / 2)
    s = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    ys, xs = np.meshgrid(s * half, s * half, indexing="ij")
    d = forward + xs.reshape(-1, 1) * right + ys.reshape(-1, 1) * down
    return _unit(d)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _rotation_y_to(up: np.ndarray) -> np.ndarray:
    """Rotation matrix taking +Y onto the unit vector ``up`` (Rodrigues)."""
    y = np.array([0.0, 1.0, 0.0])
    u = up / np.linalg.norm(up)
    v = np.cross(y, u)
    c = float(np.dot(y, u))
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)
