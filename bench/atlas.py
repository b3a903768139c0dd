"""UV atlases compared on the meshes the pipeline makes → the ``bench-atlas`` section of bench/results.md.

For each mesh (``work/mesh/mesh.ply`` of finished runs) and each atlas: the pipeline's own
(:func:`pipelines.texture.atlas.build_atlas`), Open3D's UVAtlas (``compute_uvatlas``, isochart) and
xatlas (the ``xatlas`` package, when installed: ``pip install xatlas``; it is not a dependency of
the project). Measured: charts, seam length (total 3D length of the mesh edges cut by the atlas,
as a multiple of the mesh's bounding-box diagonal), texel use (fraction of the square atlas covered
by triangles) and seconds. Each atlas runs in its own process with a time limit, so one that takes
too long is reported as such instead of stalling the benchmark. ``--baseline REV`` adds the own atlas
as it was at a git revision (its ``pipelines/texture/atlas.py``), for a before/after on the same meshes.

    python -m bench.atlas RUN_DIR [RUN_DIR ...] [--size 4096] [--limit 600] [--baseline REV ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.pipeline_bench import machine_description
from bench.sections import replace_section

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("own", "open3d_uvatlas", "xatlas")


def _read_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(str(path))
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.triangles, dtype=np.int64)


def _uv_own(v: np.ndarray, f: np.ndarray, size: int) -> np.ndarray:
    from pipelines.texture.atlas import build_atlas

    atlas = build_atlas(v, f, size, 2)
    return atlas.texel_xy[atlas.faces] / size  # (F, 3, 2) in 0..1


def _uv_own_at(source: str) -> Any:
    """The own atlas from the file ``source`` (an older revision's atlas.py), as a method like :func:`_uv_own`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("atlas_baseline", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)

    def uv(v: np.ndarray, f: np.ndarray, size: int) -> np.ndarray:
        atlas = module.build_atlas(v, f, size, 2)
        return atlas.texel_xy[atlas.faces] / size

    return uv


def _uv_open3d(v: np.ndarray, f: np.ndarray, size: int) -> np.ndarray:
    import open3d as o3d

    mesh = o3d.t.geometry.TriangleMesh()
    mesh.vertex.positions = o3d.core.Tensor(v.astype(np.float32))
    mesh.triangle.indices = o3d.core.Tensor(f.astype(np.int32))
    mesh.compute_uvatlas(size=size, gutter=2.0)
    return mesh.triangle.texture_uvs.numpy().astype(np.float64)


def _uv_xatlas(v: np.ndarray, f: np.ndarray, size: int) -> np.ndarray:
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(v.astype(np.float32), f.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = 2
    atlas.generate(pack_options=pack)
    mapping, indices, uvs = atlas[0]
    return uvs[indices].astype(np.float64)  # xatlas keeps the face order


def _worker(method: str, path: str, size: int, queue: Any, baseline: str | None = None) -> None:
    try:
        v, f = _read_mesh(Path(path))
        build = _uv_own_at(baseline) if baseline else {"own": _uv_own, "open3d_uvatlas": _uv_open3d, "xatlas": _uv_xatlas}[method]
        start = time.perf_counter()
        uv = build(v, f, size)
        seconds = time.perf_counter() - start
        queue.put({"ok": True, "seconds": round(seconds, 1)} | measure(v, f, uv, size))
    except Exception as exc:  # report any library failure as the result of that method
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]})


def measure(v: np.ndarray, f: np.ndarray, uv: np.ndarray, size: int) -> dict[str, Any]:
    """Charts, seam length (÷ bounding-box diagonal) and texel use of per-corner UVs ``uv`` (F, 3, 2) in 0..1."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # Each undirected mesh edge with the UVs of its two ends, once per face that has it.
    a = f[:, [0, 1, 2]].reshape(-1)
    b = f[:, [1, 2, 0]].reshape(-1)
    ua, ub = uv[:, [0, 1, 2]].reshape(-1, 2), uv[:, [1, 2, 0]].reshape(-1, 2)
    face = np.repeat(np.arange(len(f)), 3)
    swap = a > b
    lo, hi = np.where(swap, b, a), np.where(swap, a, b)
    ulo, uhi = np.where(swap[:, None], ub, ua), np.where(swap[:, None], ua, ub)
    order = np.lexsort((hi, lo))
    lo, hi, ulo, uhi, face = lo[order], hi[order], ulo[order], uhi[order], face[order]
    pair = (lo[1:] == lo[:-1]) & (hi[1:] == hi[:-1])  # the two faces of an interior edge
    i = np.flatnonzero(pair)
    tol = 0.25 / size  # a quarter texel
    same = (np.abs(ulo[i] - ulo[i + 1]).max(axis=1) < tol) & (np.abs(uhi[i] - uhi[i + 1]).max(axis=1) < tol)
    length = np.linalg.norm(v[lo[i]] - v[hi[i]], axis=1)
    diag = float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))
    joined = coo_matrix((np.ones(int(same.sum())), (face[i][same], face[i + 1][same])), shape=(len(f), len(f)))
    charts, _ = connected_components(joined, directed=False)
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    used = float(np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum() / 2)
    return {"faces": len(f), "charts": int(charts), "seam_length_diag": round(float(length[~same].sum()) / diag, 1), "texel_use": round(used, 3)}


def run_one(method: str, mesh: Path, size: int, limit: float, baseline: str | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(method, str(mesh), size, queue, baseline))
    proc.start()
    proc.join(limit)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"ok": False, "error": f"not done after {limit:.0f} s"}
    return queue.get() if not queue.empty() else {"ok": False, "error": f"crashed (exit {proc.exitcode})"}


def table(rows: list[dict[str, Any]], machine: str, size: int) -> str:
    lines = ["## UV atlas: own vs Open3D UVAtlas vs xatlas", "",
             f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine} with `python -m bench.atlas` ({size}² atlas, 2 texels padding). "
             "Seams: total 3D length of the mesh edges the atlas cuts, in bounding-box diagonals; texel use: fraction of the atlas "
             "covered by triangles.", "",
             "| mesh | faces | atlas | charts | seams (× diag.) | texel use | seconds |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["ok"]:
            lines.append(f"| {r['mesh']} | {r['faces']} | {r['method']} | {r['charts']} | {r['seam_length_diag']} | {r['texel_use']} | {r['seconds']} |")
        else:
            lines.append(f"| {r['mesh']} | | {r['method']} | {r['error']} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (their work/mesh/mesh.ply is used)")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--limit", type=float, default=600.0, help="seconds each atlas may take")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    parser.add_argument("--baseline", metavar="REV", action="append", default=[], help="also measure the own atlas as it was at this git revision (repeatable)")
    args = parser.parse_args(argv)
    methods: list[tuple[str, str | None]] = [(m, None) for m in METHODS]
    with tempfile.TemporaryDirectory() as tmp:
        for i, rev in enumerate(args.baseline):
            source = Path(tmp) / f"atlas_{i}.py"
            source.write_text(subprocess.run(["git", "show", f"{rev}:pipelines/texture/atlas.py"], cwd=ROOT, check=True, capture_output=True, text=True).stdout)
            methods.insert(i, (f"own at {rev}", str(source)))
        rows = []
        for run in args.runs:
            mesh = run / "work" / "mesh" / "mesh.ply"
            for method, baseline in methods:
                row = {"mesh": run.name, "method": method} | run_one(method, mesh, args.size, args.limit, baseline)
                print(json.dumps(row), flush=True)
                rows.append(row)
    replace_section(args.out, "bench-atlas", table(rows, machine_description(), args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
