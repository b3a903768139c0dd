"""``reconstruct()``'s own promises, with the stages replaced by stand-ins (each stage has its own tests)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines import dense, export, ingest, mesh, report, sfm, texture
from pipelines.options import build_options
from pipelines.run import reconstruct


def test_a_run_that_fails_after_the_model_was_written_leaves_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    stub = SimpleNamespace(textured=True, fallback_reason=None, gps={})

    def fake_export(textured: object, sparse: object, gps: object, out_dir: Path, *args: object) -> SimpleNamespace:
        for name in ("model.glb", "model_mobile.glb", "model.usdz"):  # export succeeded...
            (out_dir / name).write_bytes(b"glTF")
        return SimpleNamespace(glb_path=out_dir / "model.glb", preview_path=out_dir / "preview.png", scale=SimpleNamespace(summary=dict))

    for module, name in ((ingest, "run"), (sfm, "extract_features"), (sfm, "match_features"), (sfm, "reconstruct_sparse"),
                         (dense, "run"), (mesh, "run"), (texture, "run")):  # fmt: skip
        monkeypatch.setattr(module, name, lambda *args, **kwargs: stub)
    monkeypatch.setattr(export, "run", fake_export)

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write", full_disk)  # ...then writing the report fails
    with pytest.raises(OSError):
        reconstruct(tmp_path / "photos", out, build_options("preview"))
    assert not any((out / name).exists() for name in ("model.glb", "model_mobile.glb", "model.usdz"))
