"""Triangle-mesh arithmetic shared by the stages, the evaluation and the fixtures (numpy only).

Meshes are ``vertices`` (V, 3) float and ``faces`` (F, 3) integer vertex indices, in whatever frame
and units the caller uses; areas are in those units squared.
"""

from __future__ import annotations

import numpy as np


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area of each face (F,)."""
    tri = vertices[faces]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points (n, 3) spread uniformly by area over the mesh (deterministic given ``rng``).

    Decimated meshes have uneven vertices, so anything that measures a surface samples it this way.
    """
    tri = vertices[faces]
    area = face_areas(vertices, faces)
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    a, b = rng.random(n), rng.random(n)
    flip = a + b > 1  # fold the unit square onto the triangle
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    t = tri[pick]
    return t[:, 0] + a[:, None] * (t[:, 1] - t[:, 0]) + b[:, None] * (t[:, 2] - t[:, 0])


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) float32 following the faces' winding (glTF wants unit length)."""
    fn = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    vn = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    length = np.linalg.norm(vn, axis=1, keepdims=True)
    vn = np.where(length > 1e-30, vn / np.maximum(length, 1e-30), [0.0, 0.0, 1.0])  # only zero-area faces around: any unit vector
    return vn.astype(np.float32)


def _sorted_corner_edges(faces: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Each face corner's edge (v0v1, v1v2, v2v0 per face, as an undirected key), sorted:
    ``(keys in sorted order, corner index of each)``; corner ``c`` belongs to face ``c // 3``."""
    a = faces.reshape(-1).astype(np.int64)
    b = faces[:, [1, 2, 0]].reshape(-1).astype(np.int64)
    key = np.minimum(a, b) * num_vertices + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    return key[order], order


def face_adjacency(faces: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of faces that share an edge, as (src, dst) arrays (non-manifold edges link every face on them in a chain)."""
    key, order = _sorted_corner_edges(faces, num_vertices)
    same = np.flatnonzero(key[1:] == key[:-1])  # consecutive corners on one edge
    return order[same] // 3, order[same + 1] // 3


def face_neighbours(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(F, 3) the face across each edge (v0v1, v1v2, v2v0), -1 on borders and non-manifold edges."""
    key, order = _sorted_corner_edges(faces, num_vertices)
    same = key[1:] == key[:-1]
    # an edge shared by exactly two faces: equal to the next, and not equal to the one after
    pair = same & np.append(~same[1:], True) & np.insert(~same[:-1], 0, True)
    i = np.flatnonzero(pair)
    e0, e1 = order[i], order[i + 1]
    out = np.full(3 * len(faces), -1, dtype=np.int64)
    out[e0] = e1 // 3
    out[e1] = e0 // 3
    return out.reshape(len(faces), 3)


def quaternion_from_matrix(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion ``(w, x, y, z)`` of a 3x3 rotation matrix, ``w >= 0`` (Shepperd's method: stable for every angle)."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = ((r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s)
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = ((r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s)
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = ((r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s)
    w, x, y, z = (float(v) for v in np.asarray(q) / np.linalg.norm(q))
    return (w, x, y, z) if w >= 0 else (-w, -x, -y, -z)
