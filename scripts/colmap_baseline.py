"""COLMAP's own SIFT pipeline through pycolmap: the baseline of scripts/benchmark.py.

Not part of the package: the pipeline never runs it. It lives beside the benchmark that
compares our pipeline against it (scripts/ is not a package: benchmark.py loads this file by
path).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from reconstruct import paths
from reconstruct.errors import MappingError
from reconstruct.gt import read_cameras_txt
from reconstruct.mapping import redirect_native_output


def run_colmap_sift(
    image_dir: Path,
    output_dir: Path,
    *,
    intrinsics: Path | None = None,
    fix_intrinsics: bool = False,
    random_seed: int = 0,
) -> tuple[Path, dict[str, float]]:
    """COLMAP's own pipeline through pycolmap, as a baseline: SIFT extraction, exhaustive
    matching with verification, incremental mapping. Returns (sparse folder, seconds per stage).

    With `intrinsics` (gt-format file), all images share one PINHOLE camera with the
    parameters of the first listed image, as the COLMAP command line does with
    `--ImageReader.single_camera 1 --ImageReader.camera_params`.
    """
    import pycolmap

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    database_path = output_dir / paths.DATABASE
    database_path.unlink(missing_ok=True)
    log_path = output_dir / paths.COLMAP_LOG
    timings: dict[str, float] = {}
    reader = pycolmap.ImageReaderOptions()
    camera_mode = pycolmap.CameraMode.AUTO
    if intrinsics is not None:
        first = next(iter(read_cameras_txt(intrinsics).values()))
        reader.camera_model = "PINHOLE"
        reader.camera_params = f"{first.fx},{first.fy},{first.cx},{first.cy}"
        camera_mode = pycolmap.CameraMode.SINGLE
    if random_seed >= 0:
        pycolmap.set_random_seed(random_seed)
    with redirect_native_output(log_path):
        t0 = time.perf_counter()
        pycolmap.extract_features(
            str(database_path),
            str(image_dir),
            camera_mode=camera_mode,
            reader_options=reader,
            device=pycolmap.Device.cpu,
        )
        timings["keypoints"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pycolmap.match_exhaustive(str(database_path), device=pycolmap.Device.cpu)
        timings["matching"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        opts = pycolmap.IncrementalPipelineOptions()
        opts.random_seed = random_seed
        if intrinsics is not None and fix_intrinsics:
            opts.ba_refine_focal_length = False
            opts.ba_refine_extra_params = False
            opts.mapper.abs_pose_refine_focal_length = False
            opts.mapper.abs_pose_refine_extra_params = False
        raw = output_dir / "raw"
        shutil.rmtree(raw, ignore_errors=True)
        models = pycolmap.incremental_mapping(
            str(database_path), str(image_dir), str(raw), options=opts
        )
        timings["mapping"] = time.perf_counter() - t0
    sparse_dir = output_dir / paths.SPARSE
    shutil.rmtree(sparse_dir, ignore_errors=True)
    sparse_dir.mkdir()
    ordered = sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)
    for i, rec in enumerate(ordered):
        (sparse_dir / str(i)).mkdir()
        rec.write(str(sparse_dir / str(i)))
    shutil.rmtree(raw, ignore_errors=True)
    timings["total"] = sum(timings.values())
    if not ordered:
        raise MappingError(f"COLMAP's SIFT pipeline built no model for {image_dir}; see {log_path}")
    return sparse_dir, timings
