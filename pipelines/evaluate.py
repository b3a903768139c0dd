"""Scoring a reconstruction against a fixture scene's ground truth (``recon eval``).

Reads a run's output folder (``sparse/`` COLMAP model, ``model.glb``, ``report.json``) and a
fixture scene folder (``gt/cameras.json``, ``gt/mesh.ply``, ``gt/crop.json``, see
``fixtures/README.md``). The sparse frame has an arbitrary scale and pose, so it is first aligned
to the ground truth by a similarity fitted to the camera centres (Umeyama inside RANSAC, images
matched by file stem). Then:

- cameras: how many photos were placed, position error (metres and % of the crop diagonal) and
  rotation error (degrees) after alignment;
- surface (Tanks and Temples definitions): points sampled uniformly on both meshes inside the
  crop box; precision = fraction of reconstruction samples within tau of the ground truth,
  recall = fraction of ground-truth samples within tau of the reconstruction, F = 2PR/(P+R), at
  tau = 1 % and 0.5 % of the crop diagonal; mean accuracy / completeness distances (metres).
  Both meshes are available, so each sample's distance is measured to the other *surface*
  (exact point-to-triangle, over the whole other mesh), not to the other side's samples: no
  sampling-density floor, and no edge effect at the crop box faces.

Frames: ``report.json``'s ``sfm_from_model`` (4x4) maps GLB coordinates into the sparse frame;
the fitted ``gt_from_sfm`` maps the sparse frame into the ground-truth world (Z up, metres).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import InvalidInput
from pipelines.geometry import robust_similarity

logger = logging.getLogger(__name__)

TAU_FRACTIONS = (0.01, 0.005)
"""Distance thresholds as fractions of the crop box diagonal."""
DEFAULT_SAMPLES = 200_000
"""Points sampled on each surface inside the crop box."""
INLIER_FRACTION = 0.02
"""RANSAC inlier threshold for camera centres, as a fraction of the crop diagonal."""


@dataclass(frozen=True)
class SurfaceScore:
    """Precision / recall / F-score at one distance threshold."""

    tau_fraction: float  # of the crop diagonal
    tau_m: float
    precision: float
    recall: float
    fscore: float


@dataclass(frozen=True)
class EvalResult:
    """All numbers of one evaluation; ``to_dict()`` is what ``OUT/eval.json`` holds."""

    scene: str
    photos_total: int
    photos_registered: int
    photos_missing: list[str]
    crop_diagonal_m: float
    aligned: bool
    """False when fewer than 3 photos could be matched to the ground truth: no further numbers."""
    alignment_inliers: int = 0
    alignment_scale: float | None = None
    """Metres per sparse-model unit."""
    gt_from_sfm: list[list[float]] | None = None
    position_error_median_m: float | None = None
    position_error_max_m: float | None = None
    position_error_median_pct: float | None = None
    position_error_max_pct: float | None = None
    rotation_error_median_deg: float | None = None
    rotation_error_max_deg: float | None = None
    per_photo: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per registered photo: ``position_error_m``, ``rotation_error_deg``."""
    surface: list[SurfaceScore] = field(default_factory=list)
    accuracy_mean_m: float | None = None
    completeness_mean_m: float | None = None
    mesh_note: str = ""
    """Why there are no surface scores, or where the model transform came from."""
    planes: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per ground-truth plane of the scene (``gt/planes.json``, e.g. the studio's wall): ``rms_m`` and
    ``rms_pct`` (of the crop diagonal) of the reconstruction's distance to the plane over its extent,
    and ``recall_05pct``, the fraction of the plane within 0.5 % of the diagonal of the reconstruction."""

    def fscore(self, tau_fraction: float = 0.01) -> float | None:
        return next((s.fscore for s in self.surface if s.tau_fraction == tau_fraction), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_sparse(recon_out_dir: Path) -> Any:
    """The sparse model of a run: ``sparse/`` itself, or its largest numbered sub-model."""
    import pycolmap

    sparse = recon_out_dir / "sparse"
    candidates = [sparse] if (sparse / "images.bin").exists() or (sparse / "images.txt").exists() else sorted(p for p in sparse.glob("*") if p.is_dir())
    models = [pycolmap.Reconstruction(c) for c in candidates if (c / "images.bin").exists() or (c / "images.txt").exists()]
    if not models:
        raise InvalidInput(f"no COLMAP model in {sparse}; evaluate the output folder of a finished run")
    return max(models, key=lambda r: r.num_reg_images())


def find_key(data: Any, key: str) -> Any:
    """First value of ``key`` in nested dicts (``report.json`` keeps it in a stage summary)."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        for value in data.values():
            found = find_key(value, key)
            if found is not None:
                return found
    return None


def _rotation_angle_deg(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


def _crop_triangles(vertices: np.ndarray, triangles: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    tri = vertices[triangles]
    overlap = np.all(tri.max(axis=1) >= lo, axis=1) & np.all(tri.min(axis=1) <= hi, axis=1)
    return triangles[overlap]


def sample_in_crop(vertices: np.ndarray, triangles: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About ``n`` points uniformly distributed by area on the part of a mesh inside the box [lo, hi]."""
    from pipelines.geometry import sample_surface

    tris = _crop_triangles(vertices, triangles, lo, hi)
    if len(tris) == 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)

    def inside(p: np.ndarray) -> np.ndarray:
        return p[np.all((p >= lo) & (p <= hi), axis=1)]

    probe = inside(sample_surface(vertices, tris, 20_000, rng))
    fraction = len(probe) / 20_000
    if fraction == 0:
        return probe
    return inside(sample_surface(vertices, tris, int(n / fraction), rng))


def distances_to_mesh(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Exact distance (same units) from each point (N, 3) to the nearest point of a triangle mesh."""
    import open3d as o3d

    if len(triangles) == 0:
        return np.full(len(points), np.inf)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    return scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy().astype(np.float64)


def surface_scores(d_rec: np.ndarray, d_gt: np.ndarray, taus_m: list[float]) -> tuple[list[tuple[float, float, float]], float, float]:
    """(precision, recall, F) per tau, mean accuracy and mean completeness (metres).

    ``d_rec``: distances of the reconstruction samples to the ground-truth surface; ``d_gt``:
    distances of the ground-truth samples to the reconstructed surface.
    """
    scores = []
    for tau in taus_m:
        p, r = float((d_rec < tau).mean()), float((d_gt < tau).mean())
        scores.append((p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0))
    return scores, float(d_rec.mean()), float(d_gt.mean())


def sfm_from_model(recon_out_dir: Path) -> np.ndarray | None:
    """The 4x4 that maps ``model.glb`` coordinates into the sparse frame, from ``report.json`` (None when absent)."""
    try:
        m = find_key(json.loads((recon_out_dir / "report.json").read_text()), "sfm_from_model")
    except (OSError, ValueError):
        return None
    return None if m is None else np.asarray(m, dtype=np.float64)


def _load_glb_in_sfm_frame(recon_out_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Vertices (sparse frame) and faces of ``model.glb``, and where the transform came from."""
    import trimesh

    glb = recon_out_dir / "model.glb"
    mesh = trimesh.load(glb, force="mesh")
    transform = sfm_from_model(recon_out_dir)
    if transform is None:
        logger.warning("report.json of %s has no sfm_from_model; assuming model.glb is in the sparse frame", recon_out_dir)
        m, note = np.eye(4), "sfm_from_model missing from report.json: identity assumed"
    else:
        m, note = transform, "sfm_from_model from report.json"
    v = np.asarray(mesh.vertices, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]
    return v, np.asarray(mesh.faces, dtype=np.int64), note


def evaluate(recon_out_dir: Path, gt_dir: Path, *, n_samples: int = DEFAULT_SAMPLES, seed: int = 0) -> EvalResult:
    """Score the run in ``recon_out_dir`` against the fixture scene ``gt_dir`` (see module doc)."""
    from fixtures.groundtruth import load_cameras, load_crop, load_mesh

    recon_out_dir, gt_dir = Path(recon_out_dir), Path(gt_dir)
    gt_cams = {Path(c.name).stem: c for c in load_cameras(gt_dir)}
    crop = load_crop(gt_dir)
    diag = crop.diagonal
    rec = _load_sparse(recon_out_dir)

    est = {}
    for image in rec.images.values():
        stem = Path(image.name).stem
        if image.has_pose and stem in gt_cams:
            est[stem] = image.cam_from_world().matrix()  # 3x4 camera-from-world, sparse frame
    missing = sorted(gt_cams[s].name for s in gt_cams if s not in est)
    base = {"scene": gt_dir.name, "photos_total": len(gt_cams), "photos_registered": len(est), "photos_missing": missing, "crop_diagonal_m": diag}
    if len(est) < 3:
        return EvalResult(**base, aligned=False, mesh_note="fewer than 3 photos placed: cannot align to the ground truth")

    names = sorted(est)
    src = np.array([-est[n][:, :3].T @ est[n][:, 3] for n in names])  # camera centres, sparse frame
    dst = np.array([gt_cams[n].center for n in names])
    gt_from_sfm, inliers = robust_similarity(src, dst, INLIER_FRACTION * diag, seed=seed)
    scale = float(np.cbrt(np.linalg.det(gt_from_sfm[:3, :3])))
    rot = gt_from_sfm[:3, :3] / scale

    per_photo = {}
    for n, c_sfm in zip(names, src, strict=True):
        pos_err = float(np.linalg.norm(gt_from_sfm[:3, :3] @ c_sfm + gt_from_sfm[:3, 3] - gt_cams[n].center))
        r_est_gt = est[n][:, :3] @ rot.T  # camera-from-GT-world of the estimate
        per_photo[gt_cams[n].name] = {"position_error_m": pos_err, "rotation_error_deg": _rotation_angle_deg(r_est_gt @ gt_cams[n].R.T)}
    pos = np.array([p["position_error_m"] for p in per_photo.values()])
    ang = np.array([p["rotation_error_deg"] for p in per_photo.values()])
    cams = {
        "aligned": True,
        "alignment_inliers": int(inliers.sum()),
        "alignment_scale": scale,
        "gt_from_sfm": gt_from_sfm.tolist(),
        "position_error_median_m": float(np.median(pos)),
        "position_error_max_m": float(pos.max()),
        "position_error_median_pct": float(100 * np.median(pos) / diag),
        "position_error_max_pct": float(100 * pos.max() / diag),
        "rotation_error_median_deg": float(np.median(ang)),
        "rotation_error_max_deg": float(ang.max()),
        "per_photo": per_photo,
    }
    if not (recon_out_dir / "model.glb").is_file():
        return EvalResult(**base, **cams, mesh_note="no model.glb: surface not scored")

    v_sfm, faces, note = _load_glb_in_sfm_frame(recon_out_dir)
    v_gt = v_sfm @ gt_from_sfm[:3, :3].T + gt_from_sfm[:3, 3]
    gt_mesh = load_mesh(gt_dir)
    gt_pts = sample_in_crop(np.asarray(gt_mesh.vertices), np.asarray(gt_mesh.triangles), crop.min, crop.max, n_samples, seed)
    rec_pts = sample_in_crop(v_gt, faces, crop.min, crop.max, n_samples, seed + 1)
    if len(rec_pts) == 0:
        return EvalResult(**base, **cams, surface=[SurfaceScore(f, f * diag, 0.0, 0.0, 0.0) for f in TAU_FRACTIONS], mesh_note=note + "; no reconstructed surface inside the crop box")
    gt_v, gt_t = np.asarray(gt_mesh.vertices), np.asarray(gt_mesh.triangles)
    d_rec = distances_to_mesh(rec_pts, gt_v, gt_t)  # accuracy: reconstruction -> GT surface
    d_gt = distances_to_mesh(gt_pts, v_gt, faces)  # completeness: GT -> reconstructed surface
    scores, acc, comp = surface_scores(d_rec, d_gt, [f * diag for f in TAU_FRACTIONS])
    surface = [SurfaceScore(f, f * diag, p, r, fs) for f, (p, r, fs) in zip(TAU_FRACTIONS, scores, strict=True)]
    planes = plane_scores(gt_dir, rec_pts, gt_pts, d_gt, diag)
    logger.info("evaluated %s against %s: F@1%% = %.3f, %d/%d photos", recon_out_dir, gt_dir.name, surface[0].fscore, len(est), len(gt_cams))
    return EvalResult(**base, **cams, surface=surface, accuracy_mean_m=acc, completeness_mean_m=comp, mesh_note=note, planes=planes)


def plane_scores(gt_dir: Path, rec_pts: np.ndarray, gt_pts: np.ndarray, d_gt: np.ndarray, diag: float) -> dict[str, dict[str, float]]:
    """Flatness and completeness of each plane in ``gt/planes.json`` (see :attr:`EvalResult.planes`).

    Reconstruction samples count for a plane when they lie over its rectangle (shrunk by 1 % of the
    diagonal, away from its rim) and within 1 % of the diagonal of it (nearer objects are farther).
    """
    path = gt_dir / "gt" / "planes.json"
    if not path.is_file():
        return {}
    out = {}
    for name, plane in json.loads(path.read_text())["planes"].items():
        point, normal = np.asarray(plane["point"], dtype=np.float64), np.asarray(plane["normal"], dtype=np.float64)
        lo, hi = np.asarray(plane["min"]), np.asarray(plane["max"])
        pad = np.where(np.abs(normal) > 0.5, 0.01 * diag, -0.01 * diag)  # planes are axis-aligned: thicker across, inset along
        box_lo, box_hi = lo - pad, hi + pad
        rec_over = np.all((rec_pts >= box_lo) & (rec_pts <= box_hi), axis=1)
        gt_over = np.all((gt_pts >= box_lo) & (gt_pts <= box_hi), axis=1)
        signed = (rec_pts - point) @ normal
        near = rec_over & (np.abs(signed) < 0.01 * diag)
        on_plane = gt_over & (np.abs((gt_pts - point) @ normal) < 1e-6)
        rms = float(np.sqrt(np.mean(signed[near] ** 2))) if near.any() else float("nan")
        recall = float((d_gt[on_plane] < 0.005 * diag).mean()) if on_plane.any() else float("nan")
        out[name] = {"rms_m": rms, "rms_pct": 100 * rms / diag, "recall_05pct": recall, "samples": int(near.sum())}
    return out


def write(result: EvalResult, path: Path) -> Path:
    """Write ``result.to_dict()`` as JSON via a temporary name (``OUT/eval.json``)."""
    return write_dict(result.to_dict(), path)


def write_dict(data: dict[str, Any], path: Path) -> Path:
    """Write ``data`` (what ``recon eval`` scored) as JSON via a temporary name."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path
