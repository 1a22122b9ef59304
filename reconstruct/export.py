"""Stage 5: export the largest model as COLMAP binary + text, a coloured PLY point cloud,
and read models back (statistics, poses for evaluation).

pycolmap calls live here and in mapping.py only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths
from .config import option
from .errors import MappingError, StorageError
from .gt import CameraPose
from .storage import make_public

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """Settings of the export stage (`export.*`)."""

    min_track_length: int = option(3, "PLY: keep points seen in at least this many images")
    max_reprojection_error: float = option(2.0, "PLY: keep points with a smaller mean error, px")
    text: bool = option(True, "also write the model as COLMAP .txt files (beside the .bin)")


def _load(model_dir: Path):
    import pycolmap

    model_dir = Path(model_dir)
    if not paths.is_model_dir(model_dir):
        raise StorageError(f"{model_dir} holds no COLMAP model (images.bin or images.txt)")
    return pycolmap.Reconstruction(str(model_dir))


def model_dirs(sparse_dir: Path) -> list[Path]:
    """Model folders of a sparse folder written by run_mapping, largest first."""
    sparse_dir = Path(sparse_dir)
    if paths.is_model_dir(sparse_dir):
        return [sparse_dir]
    dirs = sorted(
        (d for d in sparse_dir.iterdir() if d.is_dir() and d.name.isdigit()),
        key=lambda d: int(d.name),
    )
    if not dirs:
        raise StorageError(f"{sparse_dir} holds no COLMAP models; run `reconstruct map` first")
    return dirs


def model_statistics(model_dir: Path) -> dict:
    """Counts and quality numbers of one model."""
    rec = _load(model_dir)
    track_lengths = [p.track.length() for p in rec.points3D.values()]
    return {
        "registered_images": int(rec.num_reg_images()),
        "cameras": int(rec.num_cameras()),
        "points": int(rec.num_points3D()),
        "observations": int(sum(track_lengths)),
        "mean_track_length": float(np.mean(track_lengths)) if track_lengths else 0.0,
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error())
        if track_lengths
        else 0.0,
        "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image())
        if rec.num_reg_images()
        else 0.0,
    }


def read_poses(model_dir: Path) -> dict[str, CameraPose]:
    """Registered images of one model as CameraPose (cam_from_world, pinhole part of the
    intrinsics)."""
    rec = _load(model_dir)
    poses = {}
    for image in rec.images.values():
        if not image.has_pose:
            continue
        cam = image.camera
        pose = image.cam_from_world()
        poses[image.name] = CameraPose(
            name=image.name,
            fx=float(cam.focal_length_x),
            fy=float(cam.focal_length_y),
            cx=float(cam.principal_point_x),
            cy=float(cam.principal_point_y),
            rotation=np.asarray(pose.rotation.matrix(), dtype=np.float64),
            translation=np.asarray(pose.translation, dtype=np.float64),
        )
    return poses


def read_all_poses(sparse_dir: Path) -> list[dict[str, CameraPose]]:
    """Poses of every model in a sparse folder (or of one model folder), largest first."""
    return [read_poses(d) for d in model_dirs(sparse_dir)]


def export_model(sparse_dir: Path, output_dir: Path, config: ExportConfig = ExportConfig()) -> Path:
    """Write the largest model to ``output_dir/model`` (.bin and .txt) and ``points.ply``;
    returns the model folder."""
    dirs = model_dirs(sparse_dir)
    if not dirs:
        raise MappingError(f"no model to export in {sparse_dir}")
    rec = _load(dirs[0])
    output_dir = Path(output_dir)
    model_dir = output_dir / paths.MODEL
    tmp = Path(tempfile.mkdtemp(dir=output_dir, prefix=".model."))
    try:
        rec.write_binary(str(tmp))
        if config.text:
            rec.write_text(str(tmp))
        make_public(tmp)
        paths.replace_dir(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kept = write_ply(rec, output_dir / paths.PLY, config)
    logger.info(
        "Exported model with %d images and %d points to %s; %d points in %s",
        rec.num_reg_images(),
        rec.num_points3D(),
        model_dir,
        kept,
        output_dir / paths.PLY,
    )
    return model_dir


def write_ply(rec, path: Path, config: ExportConfig) -> int:
    """Coloured PLY of the points passing the track-length and error filters (atomic); returns
    how many points it holds. `rec` itself is left unchanged (the filter works on a copy)."""
    import pycolmap

    rec = pycolmap.Reconstruction(rec)
    for pid in list(rec.points3D.keys()):
        p = rec.points3D[pid]
        if p.track.length() < config.min_track_length or p.error > config.max_reprojection_error:
            rec.delete_point3D(pid)
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".ply")
    os.close(fd)
    try:
        rec.export_PLY(tmp)
        make_public(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return int(rec.num_points3D())


def read_points3d(model_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse points of one model: xyz float64 (P, 3), rgb uint8 (P, 3), track length (P,)."""
    rec = _load(model_dir)
    pts = list(rec.points3D.values())
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros((0,), np.int64)
    xyz = np.array([p.xyz for p in pts], dtype=np.float64)
    rgb = np.array([p.color for p in pts], dtype=np.uint8)
    tracks = np.array([p.track.length() for p in pts], dtype=np.int64)
    return xyz, rgb, tracks
