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


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (s, R, t) with dst ~ s * R @ src + t, for (N, 3) arrays, N >= 3."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    e = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[2, 2] = -1
    r = u @ e @ vt
    var_s = (xs**2).sum() / len(src)
    s = float(np.trace(np.diag(d) @ e) / var_s) if var_s > 0 else 1.0
    return s, r, mu_d - s * r @ mu_s


def robust_similarity(src: np.ndarray, dst: np.ndarray, threshold: float, iterations: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4x4 similarity dst_from_src fitted by RANSAC on 3-point samples, refined on the inliers.

    ``threshold`` is the inlier distance in ``dst`` units. Returns the matrix and the inlier mask.
    """
    n = len(src)
    rng = np.random.default_rng(seed)
    best = np.ones(n, dtype=bool)
    if n > 3:
        best_count = -1
        for _ in range(iterations):
            idx = rng.choice(n, 3, replace=False)
            s, r, t = umeyama(src[idx], dst[idx])
            inliers = np.linalg.norm(s * src @ r.T + t - dst, axis=1) < threshold
            if inliers.sum() > best_count:
                best, best_count = inliers, int(inliers.sum())
        if best_count < 3:
            best = np.ones(n, dtype=bool)
    for _ in range(2):  # refit on the inliers, then re-select them with the refined model
        s, r, t = umeyama(src[best], dst[best])
        refined = np.linalg.norm(s * src @ r.T + t - dst, axis=1) < threshold
        if refined.sum() >= 3:
            best = refined
    s, r, t = umeyama(src[best], dst[best])
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = s * r, t
    return m, best


def ecef_from_geodetic(lat_lon_alt: np.ndarray) -> np.ndarray:
    """WGS84 latitude/longitude (degrees) and altitude (m), (N, 3), to Earth-centred Cartesian metres (N, 3)."""
    a, e2 = 6378137.0, 6.69437999014e-3
    lat, lon, alt = np.radians(lat_lon_alt[:, 0]), np.radians(lat_lon_alt[:, 1]), lat_lon_alt[:, 2]
    n = a / np.sqrt(1 - e2 * np.sin(lat) ** 2)
    return np.stack([(n + alt) * np.cos(lat) * np.cos(lon), (n + alt) * np.cos(lat) * np.sin(lon), (n * (1 - e2) + alt) * np.sin(lat)], axis=1)
