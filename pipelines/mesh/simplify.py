"""Quadric simplification to a face budget, shared by the mesh stage and the mobile level of detail."""

from __future__ import annotations

import numpy as np


def simplify(vertices: np.ndarray, faces: np.ndarray, max_faces: int, *, preserve_border: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_faces`` faces (quadric error metric, fast-simplification); the input when already small enough.

    ``vertices`` (V, 3) and ``faces`` (F, 3) of a welded mesh (split vertices would open cracks along
    the splits); returns float64 vertices and int64 faces in the same frame and units. With
    ``preserve_border`` open borders (trimmed edges, silhouettes) keep their shape where the budget
    allows; if it does not, the rest is simplified without that constraint.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) <= max_faces:
        return vertices, faces
    import fast_simplification

    reduction = 1.0 - max_faces / len(faces)
    v, f = fast_simplification.simplify(vertices.astype(np.float32), faces.astype(np.int32), target_reduction=reduction, agg=7, preserve_border=preserve_border)
    if preserve_border and len(f) > max_faces:
        return simplify(v, f, max_faces)
    v, f = np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)
    if len(f) > max_faces:  # the library may overshoot by a few faces
        import open3d as o3d

        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f.astype(np.int32)))
        mesh = mesh.simplify_quadric_decimation(max_faces)
        v, f = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.triangles, dtype=np.int64)
    return v, f
