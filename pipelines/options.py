"""Pipeline options: one frozen dataclass per stage, three named presets, and their schema.

This module is the single source of truth for options. The service validates a job's
``options`` with :func:`build_options` and serves :func:`options_schema` at ``GET /options``;
the CLI's ``--preset`` / ``--option key=value`` go through the same two functions. Option keys
are ``<stage>.<field>`` (e.g. ``dense.max_image_size``).

Each field carries ``metadata``: ``help`` (one line), and where it applies ``min`` / ``max``
(inclusive) or ``choices``. Sizes are in pixels unless the help says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.errors import InvalidOptions


def opt(default: Any, help: str, *, min: float | None = None, max: float | None = None) -> Any:
    """A dataclass field with the metadata the schema, the CLI and validation read."""
    meta: dict[str, Any] = {"help": help}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class IngestOptions:
    """Reading, orienting, checking and downscaling the photos."""

    max_image_size: int = opt(1600, "Longest side of the working images (px); larger photos are downscaled.", min=320, max=8192)
    min_photos: int = opt(3, "Fewest usable photos a job may have.", min=3, max=1000)
    max_photos: int = opt(500, "Most photos a job may have.", min=3, max=5000)
    max_pixels: int = opt(120_000_000, "Largest decoded size of one photo (pixels); guards against decompression bombs.", min=1_000_000, max=1_000_000_000)
    min_side: int = opt(160, "Photos with a shorter side than this (px) are skipped as too small.", min=16, max=4096)
    max_photo_bytes: int = opt(100_000_000, "Largest photo file (bytes); larger ones are skipped before they are read.", min=100_000, max=2_000_000_000)


@dataclass(frozen=True)
class SfmOptions:
    """Features, matching and sparse reconstruction (COLMAP via pycolmap)."""

    max_features: int = opt(8192, "Most SIFT features per image.", min=512, max=65536)
    mapper: Literal["incremental", "global"] = opt("incremental", "Sparse mapper: COLMAP's incremental mapper or its global mapper.")
    exhaustive_max_photos: int = opt(60, "Match every pair up to this many photos; above it, sequential plus spatial pairing.", min=3, max=1000)
    sequential_overlap: int = opt(12, "Neighbours matched per photo in sequential pairing.", min=2, max=100)
    min_registered_fraction: float = opt(0.5, "Fail when fewer than this fraction of the photos can be placed.", min=0.05, max=1.0)
    camera_model: Literal["SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE"] = opt("SIMPLE_RADIAL", "COLMAP camera model estimated per device; SIMPLE_RADIAL (focal + one distortion term) suits phone photos.")
    refine_principal_point: bool = opt(True, "After mapping, refine each camera's principal point where enough photos cover the image; kept only if the reprojection error drops.")
    principal_point_min_photos: int = opt(8, "Photos of one camera needed before its principal point is refined.", min=3, max=1000)


@dataclass(frozen=True)
class DenseOptions:
    """Multi-view stereo: depth maps per view, filtered and fused into a coloured point cloud."""

    max_image_size: int = opt(800, "Longest side of the images used for depth maps (px).", min=160, max=4096)
    num_source_views: int = opt(4, "Source views compared with each reference view.", min=1, max=16)
    backend: Literal["auto", "cpu", "cuda"] = opt("auto", "Depth backend: 'cuda' uses COLMAP PatchMatch (needs CUDA), 'cpu' the built-in plane sweep, 'auto' picks.")
    num_planes: int = opt(48, "Depth planes of the CPU plane sweep's coarse pass (more = fewer depth mistakes, slower).", min=8, max=256)
    window_radius: int = opt(3, "Half-size of the square window compared between views (px at the working size).", min=1, max=10)
    min_ncc: float = opt(0.3, "Lowest photo-consistency (normalised cross-correlation, -1..1) a depth pixel may have.", min=-1.0, max=1.0)
    min_consistent_views: int = opt(2, "Other views whose depth maps must agree with a depth pixel for it to be kept.", min=1, max=16)
    plane_fit_radius: int = opt(5, "Half-size (px) of the window over which each depth map is regressed onto local slanted planes before fusion; 0 = off.", min=0, max=10)
    plane_fit_max_residual: float = opt(0.01, "Largest RMS residual of a kept local plane, relative to inverse depth; windows across depth edges fit worse and keep their depths.", min=0.0005, max=0.1)
    edge_trim_px: int = opt(3, "Depth within this many px (working size) of a pixel without depth is dropped: matching windows carry a silhouette's nearer surface that far into the background (sky fringe on roof lines).", min=0, max=20)


@dataclass(frozen=True)
class MeshOptions:
    """Surface reconstruction from the fused points, cleaning and decimation."""

    poisson_depth: int = opt(9, "Octree depth of screened Poisson reconstruction (higher = finer, slower).", min=5, max=12)
    density_trim_quantile: float = opt(0.0, "Also drop the surface where Poisson's point density is in this lowest quantile (surface far from every point is always dropped).", min=0.0, max=0.5)
    max_faces: int = opt(200_000, "Face budget after decimation.", min=1000, max=5_000_000)
    min_component_fraction: float = opt(0.01, "Drop floating pieces whose area is below this fraction of the largest piece's.", min=0.0, max=1.0)
    background_depth_factor: float = opt(2.0, "Ignore points farther from every photo that sees them than this multiple of the median such distance (background); 0 keeps all.", min=0.0, max=100.0)


@dataclass(frozen=True)
class TextureOptions:
    """UV atlas and baked texture."""

    enabled: bool = opt(True, "Bake a texture from the photos; when false the model keeps vertex colours.")
    texture_size: int = opt(4096, "Side of the square texture atlas (px).", min=256, max=16384)
    photo_consistency: bool = opt(True, "Per face, drop photos that disagree with the others on its colour (a passer-by, background at a silhouette); false: the best-facing photos colour it whatever they show.")


@dataclass(frozen=True)
class ExportOptions:
    """What the app receives: the full GLB, a mobile level of detail and USDZ, at real-world scale."""

    mobile_max_faces: int = opt(100_000, "Most triangles of model_mobile.glb and model.usdz (Apple's guidance for AR assets: about 100 000).", min=1000, max=1_000_000)
    mobile_texture_size: int = opt(2048, "Side of the mobile level's texture (px), baked again for the simplified surface; at most texture.texture_size is used.", min=256, max=16384)
    usdz: bool = opt(True, "Also write model.usdz (AR Quick Look, RealityKit) from the mobile level.")
    real_size_m: float = opt(0.0, "The object's longest side in metres (the request's real_size_m); 0: metric scale from GPS EXIF where the photos have it, else normalised.", min=0.0, max=100_000.0)


@dataclass(frozen=True)
class ReconOptions:
    """All options of one reconstruction run."""

    preset: str = "balanced"
    ingest: IngestOptions = field(default_factory=IngestOptions)
    sfm: SfmOptions = field(default_factory=SfmOptions)
    dense: DenseOptions = field(default_factory=DenseOptions)
    mesh: MeshOptions = field(default_factory=MeshOptions)
    texture: TextureOptions = field(default_factory=TextureOptions)
    export: ExportOptions = field(default_factory=ExportOptions)


STAGE_OPTION_GROUPS: tuple[str, ...] = ("ingest", "sfm", "dense", "mesh", "texture", "export")

PRESETS: dict[str, dict[str, Any]] = {
    # Fast look at the result: small images, coarse mesh, small texture.
    "preview": {
        # Not below 1000 px: smaller images make SIFT upsample them, which costs more than it saves.
        "ingest.max_image_size": 1024,
        "sfm.max_features": 2048,
        # Beyond 12 photos, match capture-order neighbours (file names in shooting order, as phones
        # name them) instead of every pair: 2.6x cheaper matching on the 24-photo fixture.
        "sfm.exhaustive_max_photos": 12,
        "sfm.sequential_overlap": 5,
        "dense.max_image_size": 400,
        "dense.num_source_views": 3,
        "dense.num_planes": 32,  # same accuracy as 48 at this size on the fixtures; ~5x less CPU than balanced overall
        "mesh.poisson_depth": 7,
        "mesh.max_faces": 50_000,
        "texture.texture_size": 1024,
    },
    # The default: what the product shows on a phone.
    "balanced": {},
    # Slow and detailed, for desktop viewing.
    "high": {
        "ingest.max_image_size": 3200,
        "sfm.max_features": 16384,
        "dense.max_image_size": 1600,
        "dense.num_source_views": 6,
        "dense.num_planes": 64,
        "dense.min_consistent_views": 3,  # of 6 sources: cleaner cloud and normals for the finer mesh
        "mesh.poisson_depth": 10,
        "mesh.max_faces": 500_000,
        "texture.texture_size": 8192,
    },
}
DEFAULT_PRESET = "balanced"


def _group_fields(group: str) -> dict[str, dataclasses.Field[Any]]:
    cls = typing.get_type_hints(ReconOptions)[group]
    return {f.name: f for f in dataclasses.fields(cls)}


def _field_type(group: str, name: str) -> Any:
    cls = typing.get_type_hints(ReconOptions)[group]
    return typing.get_type_hints(cls)[name]


def option_keys() -> list[str]:
    """Every valid option key, ``<stage>.<field>``."""
    return [f"{g}.{n}" for g in STAGE_OPTION_GROUPS for n in _group_fields(g)]


def _split_key(key: str) -> tuple[str, str]:
    group, _, name = key.partition(".")
    if group not in STAGE_OPTION_GROUPS or name not in _group_fields(group):
        raise InvalidOptions(key, "unknown option; GET /options (or `recon options`) lists the valid keys")
    return group, name


def _coerce(key: str, value: Any) -> Any:
    """Check (and, for strings from a command line, convert) ``value`` for option ``key``."""
    group, name = _split_key(key)
    typ = _field_type(group, name)
    meta = _group_fields(group)[name].metadata
    if typing.get_origin(typ) is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise InvalidOptions(key, f"must be one of {', '.join(map(str, choices))}, not {value!r}")
        return value
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise InvalidOptions(key, f"must be true or false, not {value!r}")
        return value
    if typ in (int, float):
        if isinstance(value, str):
            try:
                value = typ(value)
            except ValueError:
                raise InvalidOptions(key, f"must be a{'n integer' if typ is int else ' number'}, not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidOptions(key, f"must be a{'n integer' if typ is int else ' number'}, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidOptions(key, f"must be a finite number, not {value!r}")
        if typ is int and isinstance(value, float):
            if not value.is_integer():
                raise InvalidOptions(key, f"must be an integer, not {value!r}")
            value = int(value)
        if "min" in meta and value < meta["min"]:
            raise InvalidOptions(key, f"must be at least {meta['min']}, not {value}")
        if "max" in meta and value > meta["max"]:
            raise InvalidOptions(key, f"must be at most {meta['max']}, not {value}")
        return typ(value)
    raise InvalidOptions(key, f"has an unsupported type {typ!r}")  # a programming error, named


def build_options(preset: str = DEFAULT_PRESET, overrides: Mapping[str, Any] | None = None) -> ReconOptions:
    """Options of ``preset`` with ``overrides`` (``{"dense.max_image_size": 640}``) applied.

    Raises :class:`InvalidOptions` naming the first bad preset, key or value.
    """
    if preset not in PRESETS:
        raise InvalidOptions("preset", f"must be one of {', '.join(PRESETS)}, not {preset!r}")
    values: dict[str, Any] = {**PRESETS[preset], **dict(overrides or {})}
    groups: dict[str, dict[str, Any]] = {g: {} for g in STAGE_OPTION_GROUPS}
    for key, value in values.items():
        group, name = _split_key(key)
        groups[group][name] = _coerce(key, value)
    cls_of = typing.get_type_hints(ReconOptions)
    parts = {g: cls_of[g](**groups[g]) for g in STAGE_OPTION_GROUPS}
    options = ReconOptions(preset=preset, **parts)
    check_combinations(options)
    return options


def check_combinations(options: ReconOptions) -> None:
    """Mistakes no single option shows, each a :class:`InvalidOptions` naming both keys.

    Checked wherever options are built (request validation, the CLI), so a job never fails hours
    later in a stage over a combination it could have been told about at once.
    """
    ingest, dense = options.ingest, options.dense
    if dense.min_consistent_views > dense.num_source_views:
        raise InvalidOptions(
            "dense.min_consistent_views",
            f"is {dense.min_consistent_views} but only {dense.num_source_views} source views are compared "
            "(dense.num_source_views), so no depth could ever be confirmed; lower it or raise dense.num_source_views",
        )
    if ingest.min_photos > ingest.max_photos:
        raise InvalidOptions(
            "ingest.min_photos", f"is {ingest.min_photos} but ingest.max_photos is {ingest.max_photos}: no photo set could satisfy both"
        )
    if dense.max_image_size > ingest.max_image_size:
        raise InvalidOptions(
            "dense.max_image_size",
            f"is {dense.max_image_size} px but the working images are at most {ingest.max_image_size} px (ingest.max_image_size); "
            f"use {ingest.max_image_size} or less, or raise ingest.max_image_size",
        )


def options_to_dict(options: ReconOptions) -> dict[str, Any]:
    """Flat ``{"preset": ..., "<stage>.<field>": value}`` form (for reports and job records)."""
    flat: dict[str, Any] = {"preset": options.preset}
    for g in STAGE_OPTION_GROUPS:
        for name, value in dataclasses.asdict(getattr(options, g)).items():
            flat[f"{g}.{name}"] = value
    return flat


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is Literal:
        return "string"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}[typ]


def options_schema(*, cuda: bool = False) -> dict[str, Any]:
    """What ``GET /options`` serves: presets and every option with type, default, range, help.

    Only choices this host can run are offered: ``dense.backend`` ``cuda`` only with ``cuda``.
    """
    defaults = options_to_dict(build_options(DEFAULT_PRESET))
    entries = []
    for g in STAGE_OPTION_GROUPS:
        for name, f in _group_fields(g).items():
            typ = _field_type(g, name)
            entry: dict[str, Any] = {
                "name": f"{g}.{name}",
                "stage": g,
                "type": _type_name(typ),
                "default": defaults[f"{g}.{name}"],
                "help": f.metadata["help"],
            }
            if typing.get_origin(typ) is Literal:
                entry["choices"] = [c for c in typing.get_args(typ) if cuda or (g, name, c) != ("dense", "backend", "cuda")]
            for bound in ("min", "max"):
                if bound in f.metadata:
                    entry[bound] = f.metadata[bound]
            entries.append(entry)
    presets = {name: options_to_dict(build_options(name)) for name in PRESETS}
    return {"default_preset": DEFAULT_PRESET, "presets": presets, "options": entries}
