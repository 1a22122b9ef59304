"""Stage 5: structure from motion with pycolmap (incremental by default, global as an option).

`run_mapping(image_dir, features_path, matches_path, output_dir, config)` builds a COLMAP
database from the HDF5 files, runs geometric verification and the mapper, and writes every
model to ``output_dir/sparse/<i>/`` (0 is the largest), atomically. COLMAP's own log goes to
``output_dir/colmap.log``. This module and export.py are the only ones that call pycolmap;
COLMAP integer ids never leave them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from . import paths
from .config import option
from .errors import ConfigError, MappingError
from .gt import read_cameras_txt, rotate_camera
from .progress import progress
from .refinement import RefinementConfig, refine_keypoints
from .storage import (
    FeaturesReader,
    atomic_write_json,
    iter_matches,
    make_public,
    read_pairs,
)

if TYPE_CHECKING:  # imported where used: pycolmap loads native libraries
    import pycolmap

logger = logging.getLogger(__name__)

PP_MIN_IMAGES_PER_CAMERA = 5
"""A principal point is only well constrained by several images; measured on Herz-Jesu-P8
(one camera, 8 images): AUC@5 0.942 with a fixed, 0.972 with a refined principal point."""

PP_MAX_SHIFT = 0.03
"""`refine_principal_point=auto` rejects a refined principal point further than this fraction of
the longest image side from the centre. Lenses put it within 1-2% of the centre (Herz-Jesu-P8:
23 px of 3072, 0.75%); a larger move is the principal point trading off against rotation, which
with a narrow field of view costs almost no reprojection error (issue 11)."""

PP_BIC_FACTOR = 2.0
"""`auto` keeps a refined principal point if the squared reprojection error drops by more
than ``PP_BIC_FACTOR * ln(residuals)`` noise variances per refined parameter (the Bayesian
information criterion, doubled: the residuals of one track are not independent, the same
texture is detected in every view). A principal point that rotation can imitate barely lowers
the error. Measured (evidence against the doubled penalty): Herz-Jesu-P8 77 > 37, kept (true
principal point 23 px off-centre, AUC@5 0.972); synthetic ring with focal 2.4x the width 30 < 39,
rejected (refining it: AUC@5 0.901, fixed: 0.980); points seen with focal 4.7x the width
5.9 < 43, rejected (0.956 against 0.998). A well-conditioned principal point needs less
evidence: see `PP_MAX_STANDARD_ERROR`.

Known failure (`scripts/benchmark_scenes.py`, closed 360 degree rings, principal point at the
centre): ``ring1`` (focal 1x the width) keeps a 3.8 px shift, evidence 121 > 44, AUC@5 0.903
against 0.956 fixed; ``ring2.4-turned`` kept 14 px (2.2%), evidence 50 > 45, 0.856 against
0.965 (unturned ``ring2.4``: 36 < 45, rejected), until `PP_MIN_RELATIVE_DROP`.
Cross-validation does not tell these apart: refined on half of the 3D points (two folds), the
wrong shifts also lower the error of the other half (by 28 noise variances on ring2.4-turned,
47 on ``medium``; Herz-Jesu-P8 77, narrow2-pp 112), so what they fit is systematic in the
features, not noise."""

PP_MIN_RELATIVE_DROP = 0.002
"""A refined principal point that is not well conditioned (`PP_MAX_STANDARD_ERROR`) must also
lower the squared reprojection error by at least this fraction. The evidence of a systematic
error in the features (which a poorly conditioned principal point can partly fit) grows in
proportion to the number of residuals, the BIC penalty only with its logarithm: on large scenes
the significance test alone keeps any such fit. Measured (`scripts/benchmark_scenes.py`, drop
of the squared error, refined against fixed): kept and right, Herz-Jesu-P8 0.81%, ``wide``
15.6%, ``narrow2-pp`` 0.49%; wrong, ``ring2.4-turned`` 0.066% (evidence 50 > 45, AUC@5 0.856
kept against 0.965 fixed), now rejected. Not a fix for the well-conditioned wrong shifts of
``ring1`` (0.19%) and ``medium`` (0.17%): a turned Herz-Jesu-P8 arrangement whose refinement
helps drops only 0.13%."""

PP_MAX_STANDARD_ERROR = 0.0015
"""A refined principal point whose standard error (its shift over the square root of the
evidence: the shift's own uncertainty, as a fraction of the longest image side) is at most
this is well conditioned: the data fix it to a few pixels, so even a wrong shift costs little.
It is kept when the evidence exceeds the doubled Akaike penalty (``PP_BIC_FACTOR * 2`` per
parameter: refining is then expected to lower the error of the poses) instead of the doubled
BIC one. BIC is the Bayes factor of a prior sqrt(residuals) standard errors wide (about 10% of
the image on Herz-Jesu-P8), far wider than where lenses put the principal point (1-2%), so it
asks for more evidence the more precisely the data fix the point. Measured on Herz-Jesu-P8
(focal 0.9x the side, principal point 23 px off-centre), 20 seeds of random turns: the upright
stage extracts every image in the majority's frame and ALIKED is not rotation-equivariant, so
the evidence depends on that frame (12-24 when it is the photos turned clockwise, 30-40 upside
down, 47-84 otherwise) while the standard error stays 0.075-0.098%; refining wins in every
frame (AUC@5 0.943-0.953 against 0.925-0.928 fixed in the clockwise one). Narrow rings with the
principal point at the centre, where the shift is the principal point trading off against
rotation: 0.28% (focal 2x the width, evidence 29), 0.52% (2.4x), 1.6% (3.5x), 3.3% (5x).
That standard error assumes independent residuals and is optimistic along a direction the data
barely fix. Synthetic ring with focal 1x the width, principal point at the centre
(`scripts/benchmark_scenes.py`, scene ``medium``): kept by this branch (evidence 31, shift 0.5%,
standard error 0.09%) although wrong, AUC@5 0.950 against 0.962 fixed; a delete-a-group
jackknife over 16 groups of 3D points (16 refinements from the same start) gives cx 1.3 +- 0.6,
cy 2.9 +- 2.1 px there. Tried and not adopted: on this branch, keep only coordinates at least z
jackknife standard errors from the centre. z = 2.5: medium 0.962, but Herz-Jesu-P8 turned
(seed 9: cx 10.5 +- 4.7, z 2.25) loses its principal point, 0.943 -> 0.926; z = 2: seed 9 0.942,
medium saved by z 1.95 < 2 alone. Both decisions sit within the jackknife's own noise."""


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
        "refine principal points; auto: map with them fixed (as COLMAP), then refine them in a "
        f"final bundle adjustment when every camera has >= {PP_MIN_IMAGES_PER_CAMERA} images, "
        "kept only if they stay near the centre and lower the error significantly; always: "
        "refine throughout mapping",
    )
    min_matches: int = option(15, "pairs with fewer matches are not used")
    min_inliers: int = option(15, "pairs with fewer geometrically verified matches are dropped")
    ransac_max_error: float = option(4.0, "geometric verification RANSAC threshold, pixels")
    min_model_size: int = option(3, "smallest model (registered images) worth keeping")
    init_min_num_inliers: int = option(100, "inliers the initial image pair needs")
    retry_relaxed_init: bool = option(
        True,
        "incremental: if not every image lands in one model, map once more with a relaxed "
        "initialisation (a quarter of the inliers, half the angle) and keep the better result",
    )
    random_seed: int = option(0, "seed for COLMAP's RANSAC and mapper (-1: random)")
    num_threads: int = option(-1, "threads for COLMAP (-1: all cores)", hashed=False)
    refine: RefinementConfig = option(
        RefinementConfig(),
        "sub-pixel refinement of matched keypoints onto their anchor's point before mapping "
        "(mapping.refine.*, reconstruct/refinement.py)",
    )

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

QUARTER_TURN = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
"""Camera axes of an image turned a quarter counter-clockwise (`np.rot90`): x' = y, y' = -x."""


def turn_keypoints(
    xy: np.ndarray, size: tuple[int, int], k: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Keypoints (N, 2) of a `size` = (width, height) image, in COLMAP's pixel convention, in
    the frame of the image turned by `k` counter-clockwise quarter turns (``np.rot90(img, k)``),
    and the turned size. Each quarter maps (u, v) to (v, width - u)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    w, h = size
    for _ in range(k % 4):
        xy = np.stack([xy[:, 1], w - xy[:, 0]], axis=1)
        w, h = h, w
    return xy, (w, h)


def turn_camera_params(
    model: str, params, size: tuple[int, int], k: int
) -> tuple[list[float], tuple[int, int]]:
    """Parameters and (width, height) of camera `model` for its images turned by `k` quarter
    turns (as :func:`turn_keypoints`): fx/fy and cx/cy swap, cy' = width - cx; radial
    distortion is symmetric about the principal point and stays; OPENCV's tangential terms
    become (p1', p2') = (-p2, p1)."""
    p = [float(v) for v in params]
    w, h = size
    for _ in range(k % 4):
        if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
            p[1], p[2] = p[2], w - p[1]
        elif model in ("PINHOLE", "OPENCV"):
            p[0], p[1], p[2], p[3] = p[1], p[0], p[3], w - p[2]
            if model == "OPENCV":
                p[6], p[7] = -p[7], p[6]
        else:
            raise ConfigError(f"turned images with camera model {model} are not supported")
        w, h = h, w
    return p, (w, h)


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
    matches_path: Path | Sequence[Path],
    config: MappingConfig,
    pairs: set[tuple[str, str]] | None = None,
) -> tuple[int, list[str], list[int], dict[str, int]]:
    """Write cameras, images, keypoints and matches into a new COLMAP database.

    Images extracted turned by the upright stage (feature attribute ``rotation``) go in upright:
    their keypoints are turned into the upright frame, so portrait and landscape photos of one
    camera share one COLMAP camera (COLMAP cameras have a fixed width and height) and its
    intrinsics, principal point included, are refined from all of them. `to_file_frames` turns
    the models back. Only the pairs in `pairs` (unordered) are used when it is given: matches.h5
    may hold pairs of an earlier selection. Returns (number of pairs written, image names,
    number of images of each camera, turn of every turned image).
    """
    import pycolmap

    database_path.unlink(missing_ok=True)
    known = read_cameras_txt(config.intrinsics) if config.intrinsics else {}
    with FeaturesReader(features_path) as feats:
        names, file_sizes, turns = _read_image_frames(feats, features_path)
        sizes = {
            n: turn_keypoints(np.zeros((0, 2)), file_sizes[n], turns.get(n, 0))[1] for n in names
        }
        known = _upright_intrinsics(known, names, file_sizes, turns, config.intrinsics)
        groups = _camera_groups(names, sizes, config.camera_mode)
        db = pycolmap.Database.open(str(database_path))
        try:
            image_ids = _write_cameras_and_images(
                db, feats, groups, sizes, known, file_sizes, turns, config
            )
            num_pairs = _write_matches(db, matches_path, image_ids, pairs, config.min_matches)
        finally:
            db.close()
    return num_pairs, names, [len(m) for m in groups.values()], turns


def _read_image_frames(
    feats: FeaturesReader, features_path: Path
) -> tuple[list[str], dict[str, tuple[int, int]], dict[str, int]]:
    """(image names, (width, height) of each image file, quarter turn of each turned image) of
    the features file; raises MappingError with fewer than 2 images."""
    names = feats.names()
    if len(names) < 2:
        raise MappingError(
            f"only {len(names)} readable images with features in {features_path}; "
            "at least 2 are needed"
        )
    file_sizes = {n: tuple(feats.attrs(n)["image_size"]) for n in names}
    turns = {n: int(feats.attrs(n).get("rotation", 0)) % 4 for n in names}
    turns = {n: t for n, t in turns.items() if t}
    return names, file_sizes, turns


def _upright_intrinsics(
    known: dict,
    names: list[str],
    file_sizes: dict[str, tuple[int, int]],
    turns: dict[str, int],
    intrinsics_path: Path | None,
) -> dict:
    """Known intrinsics, given for the image files, turned into the upright frame; raises
    ConfigError when none of the images of `intrinsics_path` is in the scene."""
    known = {
        n: rotate_camera(c, turns[n], *file_sizes[n]) if n in turns else c for n, c in known.items()
    }
    unknown = sorted(set(known) - set(names))
    if known and len(unknown) == len(known):
        raise ConfigError(
            f"none of the images in {intrinsics_path} are in the scene "
            f"(e.g. {unknown[0]!r}); names must be paths relative to the image folder"
        )
    return known


def _write_cameras_and_images(
    db,
    feats: FeaturesReader,
    groups: dict[str, list[str]],
    sizes: dict[str, tuple[int, int]],
    known: dict,
    file_sizes: dict[str, tuple[int, int]],
    turns: dict[str, int],
    config: MappingConfig,
) -> dict[str, int]:
    """One camera (with its rig) per group, and every image of the group with its frame and its
    keypoints in the upright frame; returns the COLMAP image id of every name."""
    import pycolmap

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
            keypoints = feats.read(n).keypoints
            if n in turns:
                xy, _ = turn_keypoints(keypoints, file_sizes[n], turns[n])
                keypoints = xy.astype(np.float32)
            db.write_keypoints(image_id, keypoints)
            image_ids[n] = image_id
    return image_ids


def _write_matches(
    db,
    matches_path: Path | Sequence[Path],
    image_ids: dict[str, int],
    pairs: set[tuple[str, str]] | None,
    min_matches: int,
) -> int:
    """Write the matches of the pairs of known images (in `pairs` if given) with at least
    `min_matches` matches (and at least 1); returns the number of pairs written. With several
    matches files, a pair is read from the first file that holds it (`storage.iter_matches`)."""
    num_pairs = 0
    files = [matches_path] if isinstance(matches_path, (str, Path)) else matches_path
    for a, b, m, _ in iter_matches(files, image_ids):
        if pairs is not None and (a, b) not in pairs:
            continue
        if len(m) < max(1, min_matches):
            continue
        db.write_matches(image_ids[a], image_ids[b], m)
        num_pairs += 1
    return num_pairs


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


def _incremental_options(
    pycolmap, config: MappingConfig, known: bool, refine_pp: bool, relaxed: bool = False
):
    opts = pycolmap.IncrementalPipelineOptions()
    opts.min_num_matches = config.min_inliers
    opts.min_model_size = config.min_model_size
    opts.num_threads = config.num_threads
    opts.random_seed = config.random_seed
    opts.mapper.init_min_num_inliers = config.init_min_num_inliers
    if relaxed:
        opts.mapper.init_min_num_inliers = max(15, config.init_min_num_inliers // 4)
        opts.mapper.init_min_tri_angle /= 2
        opts.mapper.abs_pose_min_num_inliers = max(15, opts.mapper.abs_pose_min_num_inliers // 2)
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
    relaxed: bool = False,
) -> list:
    """Run COLMAP's incremental or global mapper on a verified database; returns the models
    (pycolmap.Reconstruction), largest first."""
    import pycolmap

    if config.mapper == "incremental":
        opts = _incremental_options(pycolmap, config, known_intrinsics, refine_pp, relaxed)
        bar = progress(total=num_images, desc="mapping", unit="img")

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


def _incomplete(num_models: int, largest: int, num_images: int) -> bool:
    """Whether a mapping result is not every image in one model."""
    return num_models != 1 or largest < num_images


def _shape(models: list, num_images: int) -> dict:
    largest = models[0].num_reg_images() if models else 0
    return {
        "models": len(models),
        "largest": largest,
        "incomplete": _incomplete(len(models), largest, num_images),
    }


@dataclass(frozen=True)
class Outcome:
    """What decides between two mapping results: images in the largest model, number of
    models, whether the largest model agrees with its matches (`check_consistency`) and the
    share of its verified inlier matches it explains (``explained``, 0 if unknown)."""

    largest: int
    models: int
    consistent: bool
    explained: float = 0.0

    @classmethod
    def of(cls, models: list, report: dict | None) -> Outcome:
        """The outcome of pycolmap `models` (largest first) and `check_consistency`'s report on
        the largest; no model is never consistent."""
        largest = models[0].num_reg_images() if models else 0
        explained = float((report or {}).get("explained", 0.0))
        return cls(largest, len(models), is_consistent(report) and bool(models), explained)

    def describe(self) -> str:
        flag = "" if self.consistent else " (contradicting its matches)"
        return f"{self.largest} image(s) in {self.models} model(s){flag}"


def is_better(new: Outcome, old: Outcome) -> bool:
    """Whether mapping result `new` should replace `old` (the relaxed retry, the rescue, the
    known-intrinsics fallback). More images in the largest model, then fewer models, as
    before; but a largest model that contradicts its matches loses to one that does not if
    that one has at least half its images. Half, not any size: a small model explains the few
    pairs it was built from almost by construction (3 images, 3 pairs), so its consistency is
    weak evidence against a large model that is flagged. Between results equal in all that, the
    one explaining the larger share of its verified inlier matches: a share, not a count, so
    that denser features (the rescues') do not win by having more matches."""
    if new.consistent != old.consistent:
        flagged, sound = (old, new) if new.consistent else (new, old)
        if 2 * sound.largest >= flagged.largest:
            return new.consistent
    return (new.largest, -new.models, new.explained) > (old.largest, -old.models, old.explained)


def read_consistency(sparse_dir: Path) -> dict | None:
    """`check_consistency`'s report on model 0 of `sparse_dir`, from its mapping.json (None if
    there is none: no verified pair of registered images, or no or an older mapping.json)."""
    try:
        summary = json.loads((Path(sparse_dir) / paths.MAPPING_SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary.get("consistency")


def is_consistent(report: dict | None) -> bool:
    """The verdict of a `check_consistency` report; True when it could not judge (None)."""
    return bool((report or {}).get("consistent", True))


def model_is_consistent(sparse_dir: Path) -> bool:
    """What `check_consistency` said of model 0 of `sparse_dir` (`read_consistency`)."""
    return is_consistent(read_consistency(sparse_dir))


def contradiction_warning(explained: float) -> str:
    """The one line users read (run summary, app) about a model `check_consistency` flagged
    (`explained`: the share of verified inlier matches it explains)."""
    return (
        f"Warning: the model explains only {100 * explained:.0f}% of the verified inlier "
        "matches between its images (correct models 54-97%): its poses are likely wrong. "
        f"See {paths.MAPPING_SUMMARY} (consistency)."
    )


def drop_duplicate_models(models: list) -> tuple[list, list[dict]]:
    """Drop models whose registered images are all registered in a larger model (COLMAP's
    mapper can start a new model from images it already placed): they add nothing. Returns the
    kept models and what was dropped."""
    kept, dropped, placed = [], [], set()
    for i, rec in enumerate(models):
        names = {im.name for im in rec.images.values() if im.has_pose}
        if kept and names <= placed:
            dropped.append({"index": i, "registered": len(names), "images": sorted(names)})
            logger.info("Dropped model %d: its %d images are all in a larger model", i, len(names))
            continue
        kept.append(rec)
        placed |= names
    return kept, dropped


def _read_two_view(database_path: Path, *, geometries: bool) -> tuple[dict[int, str], list, list]:
    """(image id -> name, pair ids, and per pair its TwoViewGeometry if `geometries`, else its
    number of inliers) of the verified pairs of a COLMAP database."""
    import pycolmap

    db = pycolmap.Database.open(str(database_path))
    try:
        id_to_name = {im.image_id: im.name for im in db.read_all_images()}
        if geometries:
            pair_ids, values = db.read_two_view_geometries()
        else:
            pair_ids, values = db.read_two_view_geometry_num_inliers()
    finally:
        db.close()
    return id_to_name, list(pair_ids), list(values)


def diagnose_split(database_path: Path, models: list, names: list[str], config) -> dict | None:
    """Why the scene did not map into one model of every image, as far as the verified pairs
    tell (None when it did): the verified pairs joining the models, and for images left out
    whether any verified pair reached them. Logged as a warning."""
    import pycolmap

    model_of: dict[str, int] = {}
    for i, rec in enumerate(models):
        for im in rec.images.values():
            if im.has_pose:
                model_of.setdefault(im.name, i)
    unregistered = sorted(set(names) - set(model_of))
    if len(models) <= 1 and not unregistered:
        return None
    id_to_name, pair_ids, inliers = _read_two_view(database_path, geometries=False)
    links: dict[tuple[int, int], list[int]] = {}
    best_for: dict[str, int] = {}
    for pair_id, count in zip(pair_ids, inliers, strict=True):
        if count < config.min_inliers:
            continue
        a, b = (id_to_name[i] for i in pycolmap.pair_id_to_image_pair(pair_id))
        for n in (a, b):
            best_for[n] = max(best_for.get(n, 0), int(count))
        if a in model_of and b in model_of and model_of[a] != model_of[b]:
            key = tuple(sorted((model_of[a], model_of[b])))
            links.setdefault(key, []).append(int(count))
    reasons = []
    for i in range(1, len(models)):
        joined = [(k, v) for k, v in links.items() if i in k]
        if not joined:
            reasons.append(f"no verified pair joins model {i} to another model")
        else:
            total = sum(len(v) for _, v in joined)
            top = max(max(v) for _, v in joined)
            reasons.append(
                f"model {i} is joined to the others by {total} verified pairs (at most {top} "
                "inliers), too weak to register across"
            )
    isolated = [n for n in unregistered if n not in best_for]
    weak = [n for n in unregistered if n in best_for]
    if isolated:
        reasons.append(
            f"{len(isolated)} images have no verified pair (>= {config.min_inliers} inliers), "
            f"e.g. {isolated[0]}: too few matches with any other image"
        )
    if weak:
        reasons.append(
            f"{len(weak)} images have verified pairs (at most "
            f"{max(best_for[n] for n in weak)} inliers) but could not be registered, e.g. "
            f"{weak[0]}: too few 2D-3D correspondences"
        )
    split = {
        "models": len(models),
        "unregistered": unregistered,
        "links": [
            {"models": list(k), "verified_pairs": len(v), "max_inliers": max(v)}
            for k, v in sorted(links.items())
        ],
        "reasons": reasons,
    }
    logger.warning(
        "The scene did not map into one model of every image: %d model(s), %d image(s) left "
        "out. %s",
        len(models),
        len(unregistered),
        "; ".join(reasons),
    )
    return split


MIN_EXPLAINED_MATCHES = 0.5
"""A model that puts less than this share of the inlier matches of its verified pairs on one
of its 3D points is reported as contradicting its own evidence: less than half of it. The
share is over inlier matches, so a pair weighs by its inliers: pairs of 15-30 inliers were
right 4 times in 145 over the benchmark scenes, pairs of 100 or more 53 times in 63 on the
untextured rings and always elsewhere (scripts/verified_pairs_truth.py). Measured: 0.82 to 0.97
on every model that registered right (Herz-Jesu-P8 0.89 and P25 0.89 with AUC@5 above 0.97,
the synthetic rings and fields of view of scripts/benchmark_scenes.py, COLMAP SIFT's own models
of ring2.4 and P25 0.88 and 0.92; sacre_coeur 0.87, no ground truth), 0.54 on the untextured
ring mapped right after contrast enhancement, whose many weak pairs across the ring are wrong
(a median over pairs gave it 0.04), and 0.00 to 0.32 on the untextured rings registered with
poses 90-110 degrees wrong (AUC@5 0.00 to 0.26)."""


def explained_fraction(
    point3d_ids0: np.ndarray, point3d_ids1: np.ndarray, inlier_matches: np.ndarray
) -> float:
    """Share of a pair's inlier matches (K, 2 keypoint indices) whose two keypoints observe
    the same 3D point; `point3d_ids*` give every keypoint's point id, negative for none."""
    if len(inlier_matches) == 0:
        return 0.0
    a = point3d_ids0[inlier_matches[:, 0]]
    b = point3d_ids1[inlier_matches[:, 1]]
    return float(np.mean((a >= 0) & (a == b)))


def check_consistency(
    database_path: Path, rec: pycolmap.Reconstruction, min_inliers: int, *, warn: bool = True
) -> dict | None:
    """How much of the geometric evidence the model `rec` explains: for every verified pair
    (>= `min_inliers` inliers) of two registered images, the share of its inlier matches that
    the model put on one 3D point. A correct model explains most of them (the mapper drops a
    match only as an outlier or an untriangulated point); a model that registered images with
    wrong poses (symmetric or textureless structure, doppelgangers) contradicts most of the
    pairs it did not use. None when no pair qualifies; a warning when the share of all their
    inlier matches explained is below `MIN_EXPLAINED_MATCHES`."""
    import pycolmap

    ids = {}
    for im in rec.images.values():
        if im.has_pose:
            ids[im.name] = np.array(
                [p.point3D_id if p.has_point3D() else -1 for p in im.points2D], np.int64
            )
    id_to_name, pair_ids, geometries = _read_two_view(database_path, geometries=True)
    shares, counts = [], []
    for pair_id, geometry in zip(pair_ids, geometries, strict=True):
        inliers = np.asarray(geometry.inlier_matches).reshape(-1, 2)
        if len(inliers) < max(1, min_inliers):
            continue
        a, b = (id_to_name[i] for i in pycolmap.pair_id_to_image_pair(pair_id))
        if a in ids and b in ids:
            shares.append(explained_fraction(ids[a], ids[b], inliers))
            counts.append(len(inliers))
    if not shares:
        return None
    report = consistency_report(np.array(shares), np.array(counts))
    if warn:
        _log_contradiction(report)
    return report


def consistency_report(shares: np.ndarray, inliers: np.ndarray) -> dict:
    """`check_consistency`'s report from each pair's explained share and inlier count: the
    verdict on the share of all inlier matches explained (a pair weighs by its inliers), the
    median over pairs for reference."""
    explained = int(round(float(np.dot(shares, inliers))))
    share = explained / int(inliers.sum())
    return {
        "pairs": len(shares),
        "inliers": int(inliers.sum()),
        "explained_inliers": explained,
        "explained": round(share, 4),
        "median_explained": round(float(np.median(shares)), 4),
        "pairs_mostly_unexplained": int(np.sum(shares < MIN_EXPLAINED_MATCHES)),
        "consistent": share >= MIN_EXPLAINED_MATCHES,
    }


def _log_contradiction(report: dict | None) -> None:
    if report and not report["consistent"]:
        logger.warning(
            "The model contradicts its own matches: over %d verified pairs of registered "
            "images, %.0f%% of the inlier matches lie on one of its 3D points "
            "(correct models: 54-97%%). Its poses are likely wrong (repeated, symmetric or "
            "textureless structure). Check it visually; known intrinsics "
            "(--set mapping.intrinsics=FILE), more keypoints or more overlapping photos may help",
            report["pairs"],
            100 * report["explained"],
        )


def warn_if_contradicted(sparse_dir: Path) -> None:
    """Log `check_consistency`'s warning for model 0 of `sparse_dir` if it was flagged: for a
    result mapped with ``warn=False`` (a trial) once it has been kept."""
    _log_contradiction(read_consistency(sparse_dir))


FOCAL_OUTLIER_FACTOR = 1.6
"""A camera's focal length (relative to its image size) this many times away from the scene's
median is reported (sacre_coeur, auto cameras: 801 to 2,850 px for ~1,000 px photos)."""


def check_focal_lengths(rec) -> list[dict]:
    """Cameras of `rec` whose focal length, relative to the longest image side, is more than
    `FOCAL_OUTLIER_FACTOR` away from the median over its cameras (3 or more cameras), or whose
    field of view is implausible (focal below 0.3 or above 10 times the image size)."""
    rows = []
    users: dict[int, list[str]] = {}
    for im in rec.images.values():
        if im.has_pose:
            users.setdefault(im.camera_id, []).append(im.name)
    for camera_id, image_names in users.items():
        c = rec.cameras[camera_id]
        rows.append(
            (camera_id, float(np.mean([c.focal_length_x, c.focal_length_y])), c, image_names)
        )
    if not rows:
        return []
    median = float(np.median([f / max(c.width, c.height) for _, f, c, _ in rows]))
    out = []
    for camera_id, f, c, image_names in rows:
        ratio = f / max(c.width, c.height)
        off = max(ratio / median, median / ratio)
        if (len(rows) >= 3 and off > FOCAL_OUTLIER_FACTOR) or not 0.3 <= ratio <= 10:
            out.append(
                {
                    "camera_id": camera_id,
                    "images": sorted(image_names),
                    "focal_px": round(f, 1),
                    "focal_over_size": round(ratio, 3),
                    "times_median": round(ratio / median, 3),
                }
            )
    if out:
        logger.warning(
            "%d camera(s) with an unusual focal length (median %.2f x the image size): %s. A "
            "crop or zoom is possible; otherwise pass intrinsics or use camera_mode=single",
            len(out),
            median,
            ", ".join(f"{r['images'][0]} {r['focal_over_size']:.2f}x" for r in out[:5]),
        )
    return out


def squared_reprojection_error(rec) -> tuple[float, int]:
    """(sum of squared reprojection errors in px², number of residuals = 2 per observation)."""
    total, count = 0.0, 0
    for image in rec.images.values():
        if not image.has_pose:
            continue
        observed = image.get_observation_points2D()
        if not len(observed):
            continue
        xy = np.array([p.xy for p in observed])
        xyz = np.array([rec.points3D[p.point3D_id].xyz for p in observed])
        projected = image.camera.img_from_cam(image.cam_from_world() * xyz, False)
        total += float(np.sum((projected - xy) ** 2))
        count += 2 * len(xy)
    return total, count


def principal_point_decision(
    error_fixed: float, error_free: float, residuals: int, parameters: int, max_shift: float
) -> dict:
    """The `auto` test on the two adjustments' squared errors (px²) over `residuals`, with
    `parameters` principal-point coordinates refined, the largest refined shift `max_shift`
    (fraction of the longest image side): keep the refined principal points only if they stay
    within `PP_MAX_SHIFT` and the evidence (the error's drop in noise variances) exceeds the
    doubled BIC penalty, or, when the shift's standard error is at most
    `PP_MAX_STANDARD_ERROR`, the doubled Akaike one; a poorly conditioned shift must also
    lower the error by `PP_MIN_RELATIVE_DROP`. Returns the report's fields."""
    noise = error_free / max(1, residuals - parameters)
    evidence = (error_fixed - error_free) / max(noise, 1e-12)
    penalty = PP_BIC_FACTOR * parameters * float(np.log(max(residuals, 2)))
    penalty_conditioned = PP_BIC_FACTOR * parameters * 2.0
    standard_error = max_shift / np.sqrt(evidence) if evidence > 0 else float("inf")
    conditioned = standard_error <= PP_MAX_STANDARD_ERROR
    relative_drop = (error_fixed - error_free) / error_fixed if error_fixed > 0 else 0.0
    out = {
        "evidence": float(evidence),
        "relative_drop": float(relative_drop),
        "penalty": penalty,
        "max_shift": max_shift,
        "standard_error": float(standard_error),
        "well_conditioned": bool(conditioned),
        "penalty_well_conditioned": penalty_conditioned,
        "accepted": False,
    }
    if max_shift > PP_MAX_SHIFT:
        out["reason"] = f"a principal point moved more than {PP_MAX_SHIFT:.0%} of the image"
    elif evidence > penalty and relative_drop >= PP_MIN_RELATIVE_DROP:
        out.update(accepted=True, reason="kept: near the centre and significantly better")
    elif conditioned and evidence > penalty_conditioned:
        out.update(accepted=True, reason="kept: near the centre, well conditioned and better")
    elif evidence > penalty:
        out["reason"] = (
            f"refining it lowers the error by only {relative_drop:.2%} "
            f"(< {PP_MIN_RELATIVE_DROP:.1%}) and the shift is poorly conditioned"
        )
    else:
        out["reason"] = "refining it does not lower the error significantly"
    return out


def refine_principal_points(rec, config: MappingConfig) -> dict:
    """The `auto` principal-point policy, on a model mapped with principal points fixed.

    Two global bundle adjustments from the same start, one with principal points fixed and one
    with them refined. The refined model replaces `rec` (in place) only if every principal point
    stays within `PP_MAX_SHIFT` of its image centre and the squared error drops significantly
    (`principal_point_decision`); otherwise `rec` gets the fixed one. The model's registered
    images and its count cannot change, so this never splits a model. Returns the evidence.
    """
    import pycolmap

    counts: dict[int, int] = {}
    for image in rec.images.values():
        if image.has_pose:
            counts[image.camera_id] = counts.get(image.camera_id, 0) + 1
    report: dict = {"tried": False, "accepted": False, "images_per_camera": min(counts.values())}
    if min(counts.values()) < PP_MIN_IMAGES_PER_CAMERA:
        report["reason"] = f"a camera has fewer than {PP_MIN_IMAGES_PER_CAMERA} images"
        return report

    def adjust(model, refine_pp: bool):
        opts = pycolmap.BundleAdjustmentOptions()
        opts.refine_principal_point = refine_pp
        opts.print_summary = False
        pycolmap.bundle_adjustment(model, opts)
        return model

    fixed = adjust(pycolmap.Reconstruction(rec), False)
    free = adjust(pycolmap.Reconstruction(fixed), True)
    error_fixed, residuals = squared_reprojection_error(fixed)
    error_free, _ = squared_reprojection_error(free)
    shifts = {}
    for camera_id in counts:
        c = free.cameras[camera_id]
        shift = np.hypot(c.principal_point_x - c.width / 2, c.principal_point_y - c.height / 2)
        shifts[camera_id] = float(shift / max(c.width, c.height))
    report.update(
        tried=True,
        rms_fixed=float(np.sqrt(error_fixed / max(residuals, 1))),
        rms_refined=float(np.sqrt(error_free / max(residuals, 1))),
        **principal_point_decision(
            error_fixed, error_free, residuals, 2 * len(counts), max(shifts.values())
        ),
    )
    best = free if report["accepted"] else fixed
    for camera_id, camera in best.cameras.items():
        rec.cameras[camera_id].params = camera.params
    for frame_id, frame in best.frames.items():
        if frame.has_pose:
            rec.frames[frame_id].rig_from_world = frame.rig_from_world
    for point3D_id, point in best.points3D.items():
        rec.points3D[point3D_id].xyz = point.xyz
    rec.update_point_3d_errors()
    return report


def to_file_frames(rec, turns: dict[str, int], image_dir: Path | None = None):
    """The model `rec`, mapped with turned images upright (see `build_database`), in the frames
    of the image files: each turned image gets the camera of its shared camera turned back
    (`turn_camera_params`, exact), a pose turned about the optical axis and its 2D points turned
    back; nothing else changes (3D points, tracks and errors are the same). Returns (the model,
    ``{derived camera id: (shared camera id, quarter turns)}``); `rec` itself when no
    registered image is turned. With `image_dir`, point colours are read again from the files.
    """
    import pycolmap

    if not any(turns.get(im.name, 0) for im in rec.images.values()):
        return rec, {}
    out = pycolmap.Reconstruction()
    for camera in rec.cameras.values():
        out.add_camera_with_trivial_rig(camera)
    next_id = max(rec.cameras) + 1
    derived: dict[tuple[int, int], int] = {}
    for image in rec.images.values():
        back = -turns.get(image.name, 0) % 4  # the file is the upright image turned by -turn
        camera_id = image.camera_id
        xy = np.array([p.xy for p in image.points2D], dtype=np.float64).reshape(-1, 2)
        if back:
            camera = rec.cameras[camera_id]
            size = (camera.width, camera.height)
            if (camera_id, back) not in derived:
                params, (w, h) = turn_camera_params(camera.model.name, camera.params, size, back)
                turned = pycolmap.Camera(
                    camera_id=next_id,
                    model=camera.model,
                    width=w,
                    height=h,
                    params=params,
                    has_prior_focal_length=camera.has_prior_focal_length,
                )
                out.add_camera_with_trivial_rig(turned)
                derived[(camera_id, back)] = next_id
                next_id += 1
            xy, _ = turn_keypoints(xy, size, back)
            camera_id = derived[(camera_id, back)]
        points2D = pycolmap.Point2DList([pycolmap.Point2D(p) for p in xy])
        new = pycolmap.Image(
            name=image.name, points2D=points2D, camera_id=camera_id, image_id=image.image_id
        )
        if image.has_pose:
            pose = image.cam_from_world()
            if back:
                axes = np.linalg.matrix_power(QUARTER_TURN, back)
                pose = pycolmap.Rigid3d(pycolmap.Rotation3d(axes), np.zeros(3)) * pose
            out.add_image_with_trivial_frame(new, pose)
        else:
            out.add_image_with_trivial_frame(new)
    for point3D_id, point in rec.points3D.items():
        out.add_point3D_with_id(point3D_id, point)
    if image_dir is not None:
        out.extract_colors_for_all_images(str(image_dir))
    return out, {new: key for key, new in derived.items()}


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
    matches_path: Path | Sequence[Path],
    output_dir: Path,
    config: MappingConfig = MappingConfig(),
    *,
    pairs_path: Path | None = None,
    warn: bool = True,
) -> Path:
    """Reconstruct the scene; returns ``output_dir/sparse`` holding models ``0`` (largest),
    ``1``, ... Raises MappingError (with counts) when no model can be built. With `pairs_path`,
    only the matches of those pairs are used. Several `matches_path` files: each pair from the
    first file that holds it. `warn` False: a trial run, whose model 0 is not warned about if
    it contradicts its matches (`warn_if_contradicted` does, if the trial is kept).

    With ``config.refine.enabled`` the matched keypoints are refined first
    (`refinement.refine_keypoints`, into ``output_dir/refined/``) and the scene is mapped from
    the refined files; if it then does not map whole, or its model is flagged, the unrefined
    files are mapped too and the better result kept (`is_better`)."""
    if not config.refine.enabled:
        return _map_files(
            image_dir, features_path, matches_path, output_dir, config, pairs_path, warn, None
        )
    refined_features, refined_matches, report = refine_keypoints(
        image_dir, features_path, matches_path, output_dir, config.refine
    )
    report = {k: v for k, v in report.items() if k != "digest"}
    plain = dataclasses.replace(config, refine=dataclasses.replace(config.refine, enabled=False))
    try:
        sparse = _map_files(
            image_dir, refined_features, refined_matches, output_dir, plain, pairs_path, warn,
            report,
        )  # fmt: skip
    except MappingError as e:  # the refined matches may be too few: the unrefined ones decide
        logger.warning("Mapping the refined keypoints failed (%s); mapping the unrefined ones", e)
        report["unrefined"] = {"kept": "unrefined", "why": "no model from the refined ones"}
        return _map_files(
            image_dir, features_path, matches_path, output_dir, plain, pairs_path, warn, report
        )
    # from mapping.json's counts: the models themselves are loaded only to fall back
    summary = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())
    models = summary.get("models") or []
    largest = models[0]["registered"] if models else 0
    if _incomplete(len(models), largest, summary["num_images"]) or not is_consistent(
        read_consistency(sparse)
    ):
        _fall_back_unrefined(
            image_dir, features_path, matches_path, output_dir, plain, pairs_path, report
        )
    return sparse


def _map_files(
    image_dir: Path,
    features_path: Path,
    matches_path: Path | Sequence[Path],
    output_dir: Path,
    config: MappingConfig,
    pairs_path: Path | None,
    warn: bool,
    refinement: dict | None,
) -> Path:
    """`run_mapping` of the given files as they are; `refinement`: the counts of the keypoint
    refinement that made them (None: not refined), recorded in mapping.json."""
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
    num_pairs, names, _, turns = build_database(
        database_path, features_path, matches_path, config, selected
    )
    refine_pp, refine_after = _principal_point_policy(config)
    if config.random_seed >= 0:
        pycolmap.set_random_seed(config.random_seed)
    num_verified = _verify_database(database_path, config, log_path, num_pairs, len(names))
    tmp_dir = Path(tempfile.mkdtemp(dir=output_dir, prefix=".sparse."))
    try:
        with redirect_native_output(log_path):
            mapped = _map_scene(
                database_path,
                image_dir,
                tmp_dir / "raw",
                config,
                turns,
                len(names),
                refine_pp,
                refine_after,
            )
        if not mapped.models:
            raise MappingError(
                f"COLMAP could not build any model: {len(names)} images, {num_pairs} matched "
                f"pairs, {num_verified} verified pairs, min_model_size={config.min_model_size}. "
                f"See {log_path}. Try more keypoints, more pairs, or known intrinsics."
            )
        summary = {
            # what the models index: after a kept rescue, the rescue's files, not the run's
            "features": str(Path(features_path).resolve()),
            "database": str(database_path.resolve()),
            "num_images": len(names),
            "pairs_used": num_pairs,
            "pairs_verified": num_verified,
            **mapped.summary(refine_pp, len(turns)),
            "split": diagnose_split(database_path, mapped.models, names, config),
            "focal_outliers": check_focal_lengths(mapped.models[0]),
            "consistency": check_consistency(
                database_path, mapped.models[0], config.min_inliers, warn=warn
            ),
            "keypoint_refinement": refinement,
            "seconds": time.perf_counter() - start,
        }
        _publish_models(mapped.models, tmp_dir, sparse_dir, summary)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info(
        "Mapping: %d model(s), largest registers %d of %d images (%.1f s)",
        len(mapped.models),
        mapped.models[0].num_reg_images(),
        len(names),
        time.perf_counter() - start,
    )
    if config.intrinsics is not None and _shape(mapped.models, len(names))["incomplete"]:
        _fall_back_without_prior(
            image_dir, features_path, matches_path, output_dir, config, pairs_path, mapped.models
        )
    return sparse_dir


def _principal_point_policy(config: MappingConfig) -> tuple[bool, bool]:
    """(refine principal points during mapping, refine them after it with the `auto` policy)."""
    # `auto` refines after mapping (refine_principal_points), never during it.
    refine_pp = config.refine_principal_point == "always"
    known_fixed = bool(config.intrinsics) and config.fix_intrinsics
    refine_after = config.refine_principal_point == "auto" and not known_fixed
    if known_fixed:
        refine_pp = False
    logger.debug("Refine principal points: %s (fixed intrinsics: %s)", refine_pp, known_fixed)
    return refine_pp, refine_after


def _verify_database(
    database_path: Path, config: MappingConfig, log_path: Path, num_pairs: int, num_images: int
) -> int:
    """`verify_pairs` with COLMAP's log in `log_path`; raises MappingError when no pair passes."""
    logger.info("Verifying %d matched pairs (COLMAP log: %s)", num_pairs, log_path)
    with redirect_native_output(log_path):
        num_verified = verify_pairs(database_path, config)
    logger.info("%d of %d pairs passed geometric verification", num_verified, num_pairs)
    if num_verified == 0:
        raise MappingError(
            f"no image pair passed geometric verification ({num_pairs} pairs with at least "
            f"{config.min_matches} matches, {num_images} images). The images may not overlap; "
            "try more keypoints (--set keypoints.max_keypoints=4096) or check the input."
        )
    return num_verified


@dataclass(frozen=True, kw_only=True)
class _MappedScene:
    """The mapper's models in the frames of the image files (largest first) and how they came
    about: the turned cameras derived for each model (see `to_file_frames`), the principal-point
    report of each model, the relaxed-initialisation retry and the duplicate models dropped."""

    models: list
    turned_cameras: list[dict[int, tuple[int, int]]]
    principal_point: list[dict]
    relaxed_init_retry: dict | None
    duplicates: list[dict]

    def summary(self, refine_pp: bool, num_turned: int) -> dict:
        """The entries of ``mapping.json`` about how the models were made."""
        return {
            "refine_principal_point": refine_pp
            or any(r["accepted"] for r in self.principal_point[:1]),
            "principal_point": self.principal_point,
            "turned_images": num_turned,
            "turned_cameras": [
                {str(new): {"camera_id": old, "quarter_turns": k} for new, (old, k) in d.items()}
                for d in self.turned_cameras
            ],
            "relaxed_init_retry": self.relaxed_init_retry,
            "duplicate_models_dropped": self.duplicates,
        }


def _map_scene(
    database_path: Path,
    image_dir: Path,
    raw_dir: Path,
    config: MappingConfig,
    turns: dict[str, int],
    num_images: int,
    refine_pp: bool,
    refine_after: bool,
) -> _MappedScene:
    """Map the verified database (`_map_with_retry`), drop duplicate models, refine principal
    points with the `auto` policy if `refine_after`, and bring the models into the frames of
    the image files."""
    models, retry = _map_with_retry(
        database_path, image_dir, raw_dir, config, refine_pp, num_images
    )
    models, duplicates = drop_duplicate_models(models)
    pp_reports = [
        refine_principal_points(m, config) if refine_after else {"tried": False, "accepted": False}
        for m in models
    ]
    # Turned images were mapped upright, sharing their camera; files and every reader
    # of the models expect the frames of the image files.
    converted = [to_file_frames(m, turns, image_dir) for m in models]
    return _MappedScene(
        models=[m for m, _ in converted],
        turned_cameras=[d for _, d in converted],
        principal_point=pp_reports,
        relaxed_init_retry=retry,
        duplicates=duplicates,
    )


def _map_with_retry(
    database_path: Path,
    image_dir: Path,
    raw_dir: Path,
    config: MappingConfig,
    refine_pp: bool,
    num_images: int,
) -> tuple[list, dict | None]:
    """`run_mapper`, and for an incremental run that did not map the scene whole (with
    ``retry_relaxed_init``), once more with a relaxed initialisation, keeping the better result
    (`is_better`). Returns (models, the retry's record or None)."""
    known = bool(config.intrinsics)
    models = run_mapper(database_path, image_dir, raw_dir, config, known, refine_pp, num_images)
    if not (
        config.retry_relaxed_init
        and config.mapper == "incremental"
        and _shape(models, num_images)["incomplete"]
    ):
        return models, None
    # One more mapping run at most, only for scenes that did not map whole.
    shutil.rmtree(raw_dir, ignore_errors=True)
    again = run_mapper(
        database_path, image_dir, raw_dir, config, known, refine_pp, num_images, relaxed=True
    )
    retry = {"before": _shape(models, num_images), "after": _shape(again, num_images)}
    before = Outcome.of(models, _consistency(database_path, models, config.min_inliers))
    after = Outcome.of(again, _consistency(database_path, again, config.min_inliers))
    retry["before"]["consistent"] = before.consistent
    retry["after"]["consistent"] = after.consistent
    retry["kept"] = is_better(after, before)
    if retry["kept"]:
        models = again
    logger.info("Relaxed initialisation: %s", retry)
    return models, retry


def _consistency(database_path: Path, models: list, min_inliers: int) -> dict | None:
    """`check_consistency` of the largest of `models`, without its warning (None: no model)."""
    if not models:
        return None
    return check_consistency(database_path, models[0], min_inliers, warn=False)


def _publish_models(models: list, tmp_dir: Path, sparse_dir: Path, summary: dict) -> None:
    """Write the models and `summary` to `tmp_dir` (`write_models`), then swap it in as
    `sparse_dir` atomically."""
    write_models(models, tmp_dir, summary)
    make_public(tmp_dir)
    paths.replace_dir(tmp_dir, sparse_dir)


def _load_models(sparse_dir: Path) -> list:
    """The models of a mapping output folder, largest first."""
    import pycolmap

    models = [pycolmap.Reconstruction(str(d)) for d in sorted(sparse_dir.iterdir()) if d.is_dir()]
    return sorted(models, key=lambda r: r.num_reg_images(), reverse=True)


def _map_instead(
    image_dir, features_path, matches_path, output_dir, config, pairs_path, models, what: str
) -> tuple[bool, dict]:
    """Map the files once more with `config` in a trial folder and move the result in as
    ``output_dir/sparse`` if it is better than the current `models` (`is_better`). Returns
    (kept, {"current": outcome, "trial": outcome}); `what` names the trial in the log."""
    sparse_dir = output_dir / paths.SPARSE
    trial_dir = output_dir / ".trial"
    shutil.rmtree(trial_dir, ignore_errors=True)
    try:
        trial = _map_files(
            image_dir, features_path, matches_path, trial_dir, config, pairs_path, False, None
        )
        others = _load_models(trial)
    except MappingError:
        others = []
    current = Outcome.of(models, read_consistency(sparse_dir))
    other = Outcome.of(others, read_consistency(trial) if others else None)
    keep = is_better(other, current)
    logger.warning(
        "Largest model %s; %s: %s; keeping the %s",
        current.describe(),
        what,
        other.describe(),
        what if keep else "first",
    )
    if keep:
        paths.replace_dir(trial, sparse_dir)
        warn_if_contradicted(sparse_dir)
    shutil.rmtree(trial_dir, ignore_errors=True)
    return keep, {"current": dataclasses.asdict(current), "trial": dataclasses.asdict(other)}


def _record(sparse_dir: Path, key: str, value: dict) -> None:
    """Add `key` to mapping.json of `sparse_dir`."""
    summary_path = sparse_dir / paths.MAPPING_SUMMARY
    summary = json.loads(summary_path.read_text())
    summary[key] = value
    atomic_write_json(summary_path, summary)


def _fall_back_without_prior(
    image_dir, features_path, matches_path, output_dir, config, pairs_path, models
) -> None:
    """Known intrinsics must never make the result worse than none (issue 11: on an untextured
    ring they did). When the scene did not map whole with them, map once more without them and
    keep that result if it is better (`is_better`); mapping.json records the comparison."""
    plain = dataclasses.replace(config, intrinsics=None, fix_intrinsics=False)
    keep, outcomes = _map_instead(
        image_dir, features_path, matches_path, output_dir, plain, pairs_path, models,
        "without known intrinsics",
    )  # fmt: skip
    comparison = {
        "with_prior": outcomes["current"],
        "without_prior": outcomes["trial"],
        "kept": "without_prior" if keep else "with_prior",
    }
    _record(output_dir / paths.SPARSE, "intrinsics_prior", comparison)


def _fall_back_unrefined(
    image_dir, features_path, matches_path, output_dir, config, pairs_path, report: dict
) -> None:
    """The refined matches are fewer than the matcher's: on a scene that did not map whole from
    them (or whose model is flagged), map the unrefined files too and keep the better result;
    mapping.json records the comparison under ``keypoint_refinement``."""
    sparse_dir = output_dir / paths.SPARSE
    keep, outcomes = _map_instead(
        image_dir, features_path, matches_path, output_dir, config, pairs_path,
        _load_models(sparse_dir), "unrefined keypoints",
    )  # fmt: skip
    report["unrefined"] = {
        "refined": outcomes["current"],
        "unrefined": outcomes["trial"],
        "kept": "unrefined" if keep else "refined",
    }
    _record(sparse_dir, "keypoint_refinement", report)
