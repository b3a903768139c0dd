"""Checks of the model files a job delivers, shared by the tests and the end-of-session sweep (conftest).

* GLB: the Khronos glTF Validator (npm ``gltf-validator``, run with Node; ``scripts/bootstrap.sh``
  installs both) must report 0 errors and 0 warnings.
* USDZ: OpenUSD's validators (``pxr.UsdValidation``, usdz package rules included) must report no
  error, and so must the ARKit package rules that ``usdchecker --arkit`` enforced before usd-core
  26.x dropped them, written here (:func:`arkit_problems`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VALIDATOR_HOME = REPO / ".cache" / "gltf-validator"
VALIDATE_JS = Path(__file__).with_name("gltf_validate.js")
ARKIT_FILE_TYPES = {".usdc", ".usd", ".png", ".jpg", ".jpeg"}
"""What AR Quick Look reads inside a package (old usdchecker --arkit also allowed usda and audio; we write neither)."""
ARKIT_SHADERS = {"UsdPreviewSurface", "UsdUVTexture", "UsdPrimvarReader_float", "UsdPrimvarReader_float2", "UsdPrimvarReader_float3",
                 "UsdPrimvarReader_float4", "UsdPrimvarReader_int", "UsdTransform2d"}  # fmt: skip
ARKIT_PRIM_TYPES = {"", "Scope", "Xform", "Mesh", "Material", "Shader", "GeomSubset"}


def gltf_validator_missing() -> str | None:
    """Why the glTF Validator cannot run here, or ``None``."""
    if shutil.which("node") is None:
        return "node is not installed (scripts/bootstrap.sh installs nodejs when run as root)"
    if not (VALIDATOR_HOME / "node_modules" / "gltf-validator" / "package.json").is_file():
        return f"gltf-validator is not installed in {VALIDATOR_HOME} (python scripts/install_gltf_validator.py)"
    return None


def gltf_problems(paths: list[Path]) -> dict[Path, list[str]]:
    """Errors and warnings the Khronos glTF Validator reports, per file (files without any are left out)."""
    problems: dict[Path, list[str]] = {}
    for start in range(0, len(paths), 200):  # one Node process per batch: start-up costs more than a small file
        batch = [str(p) for p in paths[start : start + 200]]
        done = subprocess.run(["node", str(VALIDATE_JS), str(VALIDATOR_HOME), *batch], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"the glTF Validator failed: {done.stderr[-2000:]}")
        for line in done.stdout.splitlines():
            report = json.loads(line)
            issues = report["issues"]
            bad = [f"{m['code']} at {m.get('pointer', '')}: {m['message']}" for m in issues["messages"] if m["severity"] <= 1]
            if issues["numErrors"] or issues["numWarnings"]:
                problems[Path(report["file"])] = bad or [f"{issues['numErrors']} errors, {issues['numWarnings']} warnings"]
    return problems


def usdz_problems(path: Path) -> list[str]:
    """OpenUSD validator errors plus ARKit package-rule violations of one ``.usdz``."""
    from pipelines.export.usdz import validation_errors

    return validation_errors(path) + arkit_problems(path)


def arkit_problems(path: Path) -> list[str]:
    """The ARKit rules of the old ``usdchecker --arkit``: package layout, file types, root layer, prims, shaders."""
    from pxr import Usd, UsdShade

    problems: list[str] = []
    with zipfile.ZipFile(path) as package:
        entries = package.infolist()
        raw = path.read_bytes()
    if not entries:
        return ["the package is empty"]
    if Path(entries[0].filename).suffix != ".usdc":
        problems.append(f"the root layer {entries[0].filename} is not binary USD (.usdc)")
    for entry in entries:
        if Path(entry.filename).suffix.lower() not in ARKIT_FILE_TYPES:
            problems.append(f"{entry.filename}: file type not allowed in an ARKit package")
        if entry.compress_type != zipfile.ZIP_STORED:
            problems.append(f"{entry.filename}: compressed (ARKit reads packages in place: stored only)")
        name_len, extra_len = int.from_bytes(raw[entry.header_offset + 26 : entry.header_offset + 28], "little"), int.from_bytes(
            raw[entry.header_offset + 28 : entry.header_offset + 30], "little"
        )
        if (entry.header_offset + 30 + name_len + extra_len) % 64:
            problems.append(f"{entry.filename}: data not 64-byte aligned")
        if entry.filename.startswith("/") or ".." in Path(entry.filename).parts:
            problems.append(f"{entry.filename}: path leaves the package")
    try:
        stage = Usd.Stage.Open(str(path))
    except Exception:  # unreadable: validation_errors says why
        return problems
    if not stage.GetDefaultPrim():
        problems.append("no default prim")
    for prim in stage.Traverse():
        if prim.GetTypeName() not in ARKIT_PRIM_TYPES:
            problems.append(f"{prim.GetPath()}: prim type {prim.GetTypeName()} not supported by ARKit")
        if prim.IsA(UsdShade.Shader):
            shader_id = UsdShade.Shader(prim).GetShaderId()
            if shader_id not in ARKIT_SHADERS:
                problems.append(f"{prim.GetPath()}: shader {shader_id} is not UsdPreviewSurface, UsdUVTexture or UsdPrimvarReader")
    for layer in stage.GetUsedLayers():
        if layer.anonymous:  # the stage's in-memory session layer, not in the package
            continue
        if layer.GetFileFormat().formatId not in ("usdc", "usdz"):
            problems.append(f"layer {layer.identifier} is {layer.GetFileFormat().formatId}, not usdc")
    return problems


def check_model_files(root: Path) -> list[str]:
    """Every ``.glb`` and ``.usdz`` under ``root`` checked; one line per problem (the session-end sweep)."""
    lines: list[str] = []
    glbs = sorted(p for p in root.rglob("*.glb") if p.is_file() and not p.name.startswith("."))
    if glbs and gltf_validator_missing() is None:  # the caller says so when it is missing
        lines += [f"{path}: {'; '.join(issues[:5])}" for path, issues in gltf_problems(glbs).items()]
    try:
        import pxr  # noqa: F401 - the light install has no usd-core: USDZ files are then checked where it is
    except ImportError:
        return lines
    for path in sorted(p for p in root.rglob("*.usdz") if p.is_file() and not p.name.startswith(".")):
        lines += [f"{path}: {problem}" for problem in usdz_problems(path)]
    return lines
