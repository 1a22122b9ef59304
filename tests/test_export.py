"""Export: the PLY filter works on a copy; the log and points3D.txt agree."""

from __future__ import annotations

import logging

import pycolmap
import pytest

from reconstruct import paths
from reconstruct.export import ExportConfig, export_model, write_ply


@pytest.mark.slow
def test_write_ply_leaves_the_reconstruction_unchanged(staged_run, tmp_path):
    out, _ = staged_run
    rec = pycolmap.Reconstruction(str(out / paths.MODEL))
    before = rec.num_points3D()
    assert before > 0
    kept = write_ply(rec, tmp_path / "strict.ply", ExportConfig(min_track_length=10_000))
    assert kept == 0
    assert rec.num_points3D() == before


@pytest.mark.slow
def test_logged_point_count_matches_points3d_txt(staged_run, tmp_path, caplog):
    out, _ = staged_run
    target = tmp_path / "export"
    target.mkdir()
    with caplog.at_level(logging.INFO, logger="reconstruct"):
        model_dir = export_model(
            out / paths.SPARSE, target, ExportConfig(max_reprojection_error=0.5)
        )
    lines = (model_dir / "points3D.txt").read_text().splitlines()
    num_points = sum(1 for line in lines if line and not line.startswith("#"))
    message = next(r.getMessage() for r in caplog.records if "Exported model" in r.getMessage())
    assert f"and {num_points} points to" in message, message
