"""Stage 4: structure from motion with pycolmap (incremental by default, global as an option).

`run_mapping(image_dir, features_path, matches_path, output_dir, config)` builds a COLMAP
database from the HDF5 files, runs geometric verification and the mapper, and writes every
model to ``output_dir/sparse/<i>/`` (0 is the largest), atomically. COLMAP's own log goes to
``output_dir/colmap.log``. This module and export.py are the only ones that call pycolmap;
COLMAP integer ids never leave them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from . import paths
from .config import option
from .errors import ConfigError, MappingError
from .gt import read_cameras_txt
from .storage import FeaturesReader, MatchesReader, atomic_write_json, make_public, read_pairs

logger = logging.getLogger(__name__)

PP_MIN_IMAGES_PER_CAMERA = 5
"""A principal point is only well constrained by several images; measured on Herz-Jesu-P8
(one camera, 8 images): AUC@5 0.942 with a fixed, 0.972 with a refined principal point."""


@dataclass(frozen=True, kw_only=True)
class MappingConfig:
    """Settings of the mapping stage (`mapping.*`)."""

    mapper: Literal["incremental", "global"] = option(
        "incremental", "pycolmap incremental mapper, or the global (GLOMAP) mapper"
    )
    camera_mode: Literal["auto", "single", "per_image", "per_folder"] = option(
        "auto", "auto: one camera per image size (as COLMAP); or single, per_image, per_folder"
    )
    camera_model: Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"] = (
        option("SIMPLE_RADIAL", "COLMAP camera model of cameras without a known calibration")
    )
    intrinsics: Path | None = option(
        None, "file of known intrinsics, lines 'name fx fy cx cy [pose ignored]' (gt format)"
    )
    fix_intrinsics: bool = option(False, "keep known intrinsics fixed in bundle adjustment")
    refine_principal_point: Literal["auto", "always", "never"] = option(
        "auto",
        "refine principal points in bundle adjustment; auto: only when every camera is shared "
        f"by at least {PP_MIN_IMAGES_PER_CAMERA} images (COLMAP never does)",
    )
    min_matches: int = option(15, "pairs with fewer matches are not used")
    min_inliers: int = option(15, "pairs with fewer geometrically verified matches are dropped")
    ransac_max_error: float = option(4.0, "geometric verification RANSAC threshold, pixels")
    min_model_size: int = option(3, "smallest model (registered images) worth keeping")
    init_min_num_inliers: int = option(100, "inliers the initial image pair needs")
    random_seed: int = option(0, "seed for COLMAP's RANSAC and mapper (-1: random)")
    num_threads: int = option(-1, "threads for COLMAP (-1: all cores)", hashed=False)

    def __post_init__(self) -> None:
        if self.min_matches < 0 or self.min_inliers < 0:
            raise ValueError("min_matches and min_inliers must be non-negative")


@contextlib.contextmanager
def redirect_native_output(log_path: Path) -> Iterator[None]:
    """Send the C++ library's stdout/stderr (COLMAP's log) to `log_path`.

    Python's sys.stderr keeps pointing at the terminal, so progress bars stay visible.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    py_stderr, py_stdout = sys.stderr, sys.stdout
    term_err = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    term_out = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    with open(log_path, "ab") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            if getattr(py_stderr, "fileno", None) and _is_fd(py_stderr, 2):
                sys.stderr = term_err
            if getattr(py_stdout, "fileno", None) and _is_fd(py_stdout, 1):
                sys.stdout = term_out
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[1], 1)
            os.dup2(saved[2], 2)
            sys.stderr, sys.stdout = py_stderr, py_stdout
            for fd in saved.values():
                os.close(fd)
            term_err.close()
            term_out.close()


def _is_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (OSError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------- cameras


def _camera_groups(
    names: list[str], sizes: dict[str, tuple[int, int]], mode: str
) -> dict[str, list[str]]:
    """Group image names that share a camera."""
    groups: dict[str, list[str]] = {}
    for n in names:
        w, h = sizes[n]
        if mode == "single":
            key = "all"
        elif mode == "per_image":
            key = n
        elif mode == "per_folder":
            key = f"{Path(n).parent.as_posix()}|{w}x{h}"
        else:  # auto: like COLMAP without EXIF focal: one camera per image size
            key = f"{w}x{h}"
        groups.setdefault(key, []).append(n)
    if mode == "single" and len({sizes[n] for n in names}) > 1:
        raise ConfigError(
            "mapping.camera_mode=single needs images of one size; found "
            f"{sorted({sizes[n] for n in names})}. Use camera_mode=auto or per_image."
        )
    return groups


def _make_camera(pycolmap, model: str, size: tuple[int, int], known):
    w, h = size
    if known is not None:
        fx, fy, cx, cy = known.fx, known.fy, known.cx, known.cy
        f = 0.5 * (fx + fy)
        params = {
            "SIMPLE_PINHOLE": [f, cx, cy],
            "PINHOLE": [fx, fy, cx, cy],
            "SIMPLE_RADIAL": [f, cx, cy, 0.0],
            "RADIAL": [f, cx, cy, 0.0, 0.0],
            "OPENCV": [fx, fy, cx, cy, 0.0, 0.0, 0.0, 0.0],
        }[model]
        camera = pycolmap.Camera.create_from_model_name(0, model, f, w, h)
        camera.params = params
        camera.has_prior_focal_length = True
    else:
        f = 1.2 * max(w, h)  # COLMAP's default focal guess without EXIF
        camera = pycolmap.Camera.create_from_model_name(0, model, f, w, h)
    return camera


# ----------------------------------------------------------------------------- database


def build_database(
    database_path: Path,
    features_path: Path,
    matches_path: Path,
    config: MappingConfig,
    pairs: set[tuple[str, str]] | None = None,
) -> tuple[int, list[str], list[int]]:
    """Write cameras, images, keypoints and matches into a new COLMAP database.

    Only the pairs in `pairs` (unordered) are used when it is given: matches.h5 may hold pairs
    of an earlier selection. Returns (number of pairs written, image names, number of images
    of each camera).
    """
    import pycolmap

    database_path.unlink(missing_ok=True)
    known = read_cameras_txt(config.intrinsics) if config.intrinsics else {}
    with FeaturesReader(features_path) as feats:
        names = feats.names()
        if len(names) < 2:
            raise MappingError(
                f"only {len(names)} readable images with features in {features_path}; "
                "at least 2 are needed"
            )
        sizes = {n: tuple(feats.attrs(n)["image_size"]) for n in names}
        unknown = sorted(set(known) - set(names))
        if known and len(unknown) == len(known):
            raise ConfigError(
                f"none of the images in {config.intrinsics} are in the scene "
                f"(e.g. {unknown[0]!r}); names must be paths relative to the image folder"
            )
        groups = _camera_groups(names, sizes, config.camera_mode)
        db = pycolmap.Database.open(str(database_path))
        try:
            image_ids: dict[str, int] = {}
            for members in groups.values():
                prior = next((known[n] for n in members if n in known), None)
                shared = config.camera_mode != "per_image" and prior is not None
                if shared and any(n not in known for n in members):
                    logger.warning(
                        "Known intrinsics of %s are used for all %d images sharing its camera",
                        prior.name,
                        len(members),
                    )
                camera = _make_camera(pycolmap, config.camera_model, sizes[members[0]], prior)
                camera_id = db.write_camera(camera)
                rig = pycolmap.Rig()
                sensor = pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id)
                rig.add_ref_sensor(sensor)
                rig_id = db.write_rig(rig)
                for n in members:
                    image_id = db.write_image(pycolmap.Image(name=n, camera_id=camera_id))
                    frame = pycolmap.Frame()
                    frame.rig_id = rig_id
                    frame.add_data_id(pycolmap.data_t(sensor, image_id))
                    db.write_frame(frame)
                    db.write_keypoints(image_id, feats.read(n).keypoints)
                    image_ids[n] = image_id
            num_pairs = 0
            with MatchesReader(matches_path) as matches:
                for a, b in matches.pairs():
                    if a not in image_ids or b not in image_ids:
                        continue
                    if pairs is not None and (a, b) not in pairs:
                        continue
                    m, _ = matches.read(a, b)
                    if len(m) < max(1, config.min_matches):
                        continue
                    db.write_matches(image_ids[a], image_ids[b], m)
                    num_pairs += 1
        finally:
            db.close()
    return num_pairs, names, [len(m) for m in groups.values()]


def verify_pairs(database_path: Path, config: MappingConfig) -> int:
    """Geometric verification of every matched pair (COLMAP's two-view geometry); returns the
    number of verified pairs."""
    import pycolmap

    tvg = pycolmap.TwoViewGeometryOptions()
    tvg.min_num_inliers = config.min_inliers
    tvg.ransac.max_error = config.ransac_max_error
    if config.random_seed >= 0:
        tvg.ransac.random_seed = config.random_seed
    verifier = pycolmap.GeometricVerifierOptions()
    verifier.num_threads = config.num_threads
    pycolmap.geometric_verification(
        str(database_path), verifier_options=verifier, two_view_geometry_options=tvg
    )
    db = pycolmap.Database.open(str(database_path))
    try:
        return int(db.num_verified_image_pairs())
    finally:
        db.close()


def _incremental_options(pycolmap, config: MappingConfig, known: bool, refine_pp: bool):
    opts = pycolmap.IncrementalPipelineOptions()
    opts.min_num_matches = config.min_inliers
    opts.min_model_size = config.min_model_size
    opts.num_threads = config.num_threads
    opts.random_seed = config.random_seed
    opts.mapper.init_min_num_inliers = config.init_min_num_inliers
    if config.random_seed >= 0:
        opts.mapper.random_seed = config.random_seed
        opts.triangulation.random_seed = config.random_seed
    opts.ba_refine_principal_point = refine_pp
    if known and config.fix_intrinsics:
        opts.ba_refine_focal_length = False
        opts.ba_refine_principal_point = False
        opts.ba_refine_extra_params = False
        opts.mapper.abs_pose_refine_focal_length = False
        opts.mapper.abs_pose_refine_extra_params = False
    return opts


def _global_options(pycolmap, config: MappingConfig, known: bool, refine_pp: bool):
    opts = pycolmap.GlobalPipelineOptions()
    opts.min_num_matches = config.min_inliers
    opts.min_model_size = config.min_model_size
    opts.num_threads = config.num_threads
    opts.random_seed = config.random_seed
    opts.mapper.bundle_adjustment.refine_principal_point = refine_pp
    if known and config.fix_intrinsics:
        ba = opts.mapper.bundle_adjustment
        ba.refine_focal_length = False
        ba.refine_principal_point = False
        ba.refine_extra_params = False
    return opts


def run_mapper(
    database_path: Path,
    image_dir: Path,
    raw_dir: Path,
    config: MappingConfig,
    known_intrinsics: bool,
    refine_pp: bool,
    num_images: int,
) -> list:
    """Run COLMAP's incremental or global mapper on a verified database; returns the models
    (pycolmap.Reconstruction), largest first."""
    import pycolmap

    if config.mapper == "incremental":
        opts = _incremental_options(pycolmap, config, known_intrinsics, refine_pp)
        bar = tqdm(total=num_images, desc="mapping", unit="img")

        def on_init() -> None:
            bar.update(2)

        def on_next() -> None:
            bar.update(1)

        try:
            models = pycolmap.incremental_mapping(
                str(database_path),
                str(image_dir),
                str(raw_dir),
                options=opts,
                initial_image_pair_callback=on_init,
                next_image_callback=on_next,
            )
        finally:
            bar.close()
    else:
        opts = _global_options(pycolmap, config, known_intrinsics, refine_pp)
        models = pycolmap.global_mapping(
            str(database_path), str(image_dir), str(raw_dir), options=opts
        )
    return sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)


def write_models(models: list, sparse_dir: Path, summary: dict) -> None:
    """Write each model to ``sparse_dir/<i>`` and `summary` plus per-model counts to
    ``sparse_dir/mapping.json``; removes the mapper's ``raw`` folder."""
    for i, rec in enumerate(models):
        d = sparse_dir / str(i)
        d.mkdir()
        rec.write(str(d))
    shutil.rmtree(sparse_dir / "raw", ignore_errors=True)
    counts = [
        {"index": i, "registered": r.num_reg_images(), "points": r.num_points3D()}
        for i, r in enumerate(models)
    ]
    atomic_write_json(sparse_dir / paths.MAPPING_SUMMARY, {**summary, "models": counts})


def run_mapping(
    image_dir: Path,
    features_path: Path,
    matches_path: Path,
    output_dir: Path,
    config: MappingConfig = MappingConfig(),
    *,
    pairs_path: Path | None = None,
) -> Path:
    """Reconstruct the scene; returns ``output_dir/sparse`` holding models ``0`` (largest),
    ``1``, ... Raises MappingError (with counts) when no model can be built. With `pairs_path`,
    only the matches of those pairs are used."""
    import pycolmap

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / paths.COLMAP_LOG
    database_path = output_dir / paths.DATABASE
    sparse_dir = output_dir / paths.SPARSE
    start = time.perf_counter()
    selected = None
    if pairs_path is not None:
        selected = {tuple(sorted(p)) for p in read_pairs(pairs_path)}
    num_pairs, names, camera_sizes = build_database(
        database_path, features_path, matches_path, config, selected
    )
    refine_pp = config.refine_principal_point == "always" or (
        config.refine_principal_point == "auto" and min(camera_sizes) >= PP_MIN_IMAGES_PER_CAMERA
    )
    if known_fixed := (bool(config.intrinsics) and config.fix_intrinsics):
        refine_pp = False
    logger.debug("Refine principal points: %s (fixed intrinsics: %s)", refine_pp, known_fixed)
    if config.random_seed >= 0:
        pycolmap.set_random_seed(config.random_seed)
    logger.info("Verifying %d matched pairs (COLMAP log: %s)", num_pairs, log_path)
    with redirect_native_output(log_path):
        num_verified = verify_pairs(database_path, config)
    logger.info("%d of %d pairs passed geometric verification", num_verified, num_pairs)
    if num_verified == 0:
        raise MappingError(
            f"no image pair passed geometric verification ({num_pairs} pairs with at least "
            f"{config.min_matches} matches, {len(names)} images). The images may not overlap; "
            "try more keypoints (--set keypoints.max_keypoints=4096) or check the input."
        )
    tmp_dir = Path(tempfile.mkdtemp(dir=output_dir, prefix=".sparse."))
    known = bool(config.intrinsics)
    try:
        with redirect_native_output(log_path):
            models = run_mapper(
                database_path, image_dir, tmp_dir / "raw", config, known, refine_pp, len(names)
            )
        if not models:
            raise MappingError(
                f"COLMAP could not build any model: {len(names)} images, {num_pairs} matched "
                f"pairs, {num_verified} verified pairs, min_model_size={config.min_model_size}. "
                f"See {log_path}. Try more keypoints, more pairs, or known intrinsics."
            )
        summary = {
            "num_images": len(names),
            "pairs_used": num_pairs,
            "pairs_verified": num_verified,
            "refine_principal_point": refine_pp,
            "seconds": time.perf_counter() - start,
        }
        write_models(models, tmp_dir, summary)
        make_public(tmp_dir)
        paths.replace_dir(tmp_dir, sparse_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    largest = models[0].num_reg_images()
    logger.info(
        "Mapping: %d model(s), largest registers %d of %d images (%.1f s)",
        len(models),
        largest,
        len(names),
        time.perf_counter() - start,
    )
    return sparse_dir


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
