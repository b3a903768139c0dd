"""``model.usdz`` for AR Quick Look and RealityKit, written with OpenUSD (``usd-core``, module ``pxr``).

The package holds one binary layer ``model.usdc`` and the texture ``texture.jpg``, uncompressed and
64-byte aligned (what ``UsdUtils.CreateNewUsdzPackage`` writes and ARKit requires). The stage is
Y up with ``metersPerUnit`` 1 (the model frame is in metres), its default prim ``/Model`` is a
``component`` model holding the mesh ``/Model/Geom`` and its material ``/Model/Materials/Surface``:
a ``UsdPreviewSurface`` whose diffuse colour is a ``UsdUVTexture`` read at the ``st`` primvar (the
OpenGL UV convention, v up, as in USD) -- or, untextured, the mesh's ``displayColor``. Only the
shaders ARKit knows are used: UsdPreviewSurface, UsdUVTexture, UsdPrimvarReader.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipelines.export.lod import Level
from pipelines.files import atomic_path

ROOT_PRIM = "/Model"


def write_usdz(path: Path, level: Level, jpeg_quality: int = 90) -> Path:
    """Write ``level`` (model frame, metres) as a USDZ package at ``path`` (atomically)."""
    import cv2
    from pxr import Sdf, Usd, UsdUtils

    path = Path(path)
    build = Path(tempfile.mkdtemp(prefix="usdz-", dir=path.parent))
    try:
        layer = build / "model.usdc"
        stage = Usd.Stage.CreateNew(str(layer))
        texture_file = None
        if level.texture is not None and level.uv is not None:
            texture_file = "texture.jpg"
            if not cv2.imwrite(str(build / texture_file), np.ascontiguousarray(level.texture[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
                raise OSError(f"cannot write {build / texture_file}")
        _define_model(stage, level, texture_file)
        stage.GetRootLayer().Save()
        with atomic_path(path) as tmp:
            if not UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer)), str(tmp)):
                raise OSError(f"UsdUtils could not package {layer} into {tmp}")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return path


def validation_errors(path: Path) -> list[str]:
    """Errors OpenUSD's validators (``pxr.UsdValidation``, what ``usdchecker`` runs; usdz rules included) find in ``path``."""
    from pxr import Usd, UsdValidation

    try:
        stage = Usd.Stage.Open(str(path))
    except Exception as exc:  # pxr raises Tf.ErrorException for unreadable packages
        return [f"{path.name} does not open as a USD stage: {str(exc).strip()[:300]}"]
    if stage is None:
        return [f"{path.name} does not open as a USD stage"]
    context = UsdValidation.ValidationContext(UsdValidation.ValidationRegistry().GetOrLoadAllValidators())
    return [
        f"{e.GetValidator().GetMetadata().name if e.GetValidator() else '?'}: {e.GetMessage()}"
        for e in context.Validate(stage)
        if e.GetType() == UsdValidation.ValidationErrorType.Error
    ]


def _define_model(stage: object, level: Level, texture_file: str | None) -> None:
    from pxr import Gf, Kind, Sdf, Usd, UsdGeom, UsdShade, Vt

    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, ROOT_PRIM)
    stage.SetDefaultPrim(root.GetPrim())  # type: ignore[attr-defined]
    Usd.ModelAPI(root).SetKind(Kind.Tokens.component)

    mesh = UsdGeom.Mesh.Define(stage, f"{ROOT_PRIM}/Geom")
    points = level.vertices.astype(np.float32)
    mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(points))
    mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(level.faces), 3, dtype=np.int32)))
    mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(level.faces.reshape(-1).astype(np.int32)))
    mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(level.normals.astype(np.float32)))
    mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)  # a scanned triangle mesh, not a subdivision cage
    mesh.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
    mesh.CreateDoubleSidedAttr(True)  # open scans are seen from behind too
    lo, hi = points.min(axis=0), points.max(axis=0)
    mesh.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))]))
    primvars = UsdGeom.PrimvarsAPI(mesh)
    colours = primvars.CreatePrimvar("displayColor", Sdf.ValueTypeNames.Color3fArray, UsdGeom.Tokens.vertex)
    colours.Set(Vt.Vec3fArray.FromNumpy(np.clip(level.colours, 0.0, 1.0).astype(np.float32)))

    material = UsdShade.Material.Define(stage, f"{ROOT_PRIM}/Materials/Surface")
    surface = UsdShade.Shader.Define(stage, f"{ROOT_PRIM}/Materials/Surface/PreviewSurface")
    surface.CreateIdAttr("UsdPreviewSurface")
    surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(1.0)  # photographed colour, no specular model
    surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
    surface.CreateOutput("surface", Sdf.ValueTypeNames.Token)
    reader = UsdShade.Shader.Define(stage, f"{ROOT_PRIM}/Materials/Surface/PrimvarReader")
    if texture_file is not None and level.uv is not None:
        st = primvars.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
        st.Set(Vt.Vec2fArray.FromNumpy(level.uv.astype(np.float32)))
        reader.CreateIdAttr("UsdPrimvarReader_float2")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
        reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)
        image = UsdShade.Shader.Define(stage, f"{ROOT_PRIM}/Materials/Surface/BaseColor")
        image.CreateIdAttr("UsdUVTexture")
        image.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(f"./{texture_file}")  # "./": at the package root, not in a sub-folder
        image.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
        image.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
        image.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("clamp")
        image.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("clamp")
        image.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
        surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(image.ConnectableAPI(), "rgb")
    else:
        reader.CreateIdAttr("UsdPrimvarReader_float3")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("displayColor")
        reader.CreateOutput("result", Sdf.ValueTypeNames.Float3)
        surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(reader.ConnectableAPI(), "result")
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
    UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim()).Bind(material)
