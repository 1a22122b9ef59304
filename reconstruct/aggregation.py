"""Global image descriptors that need no download: VLAD over the local ALIKED descriptors.

A k-means codebook (``scipy.cluster.vq.kmeans2``, k-means++ start, fixed seed) is fitted on a
sample of the scene's own local descriptors from ``features.h5``. Each image's descriptors are
assigned to their nearest centre; the residuals are summed per centre, passed through a signed
square root (power law), L2-normalised per centre (intra-normalisation) and the concatenation is
L2-normalised, giving a (k * D,) float32 vector in ``global-local.h5`` (the contract of DINOv2's
``global.h5``, in a file of its own so both coexist in one output folder). The file's hash covers
the settings, the features file's hash and the image list, since the codebook depends on all of
them; the file is rebuilt whenever one changes (it costs seconds).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths
from .config import option
from .progress import progress
from .retrieval import global_header
from .storage import (
    GLOBAL_SCHEMA,
    FeaturesReader,
    GlobalDescriptorsReader,
    Header,
    ResultWriter,
    read_header,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LocalDescriptorConfig:
    """VLAD of the local features, no download (`pairs.local.*`)."""

    codebook_size: int = option(32, "k-means centres of the VLAD codebook")
    sample_per_image: int = option(300, "local descriptors per image used to fit the codebook")
    sample_total: int = option(
        100_000, "at most this many descriptors in the codebook sample (fewer per image above)"
    )
    iterations: int = option(20, "k-means iterations")
    seed: int = option(0, "random seed of the sample and of the k-means start")

    def __post_init__(self) -> None:
        if self.codebook_size < 1:
            raise ValueError(f"codebook_size must be at least 1, got {self.codebook_size}")
        if self.sample_per_image < 1:
            raise ValueError(f"sample_per_image must be at least 1, got {self.sample_per_image}")
        if self.sample_total < 1:
            raise ValueError(f"sample_total must be at least 1, got {self.sample_total}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")


def fit_codebook(sample: np.ndarray, k: int, *, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """(M, D) descriptors -> (min(k, M), D) float32 k-means centres (deterministic for a seed).

    The k-means++ seeding runs on a random subset of 50 k descriptors: scipy's seeding costs
    O(k^2 M) and took 13 s of the 18 s of a 7,500 x 128, k = 32 fit (2 loaded cores), while
    50 k points are plenty to spread 32 seeds; Lloyd's iterations then use the whole sample.
    """
    from scipy.cluster.vq import kmeans2

    data = np.ascontiguousarray(sample, np.float64)
    k = min(k, len(data))
    if k < 1:
        raise ValueError("cannot fit a codebook on no descriptors")
    rng = np.random.default_rng(seed)
    subset = data
    if len(data) > 50 * k:
        subset = data[np.sort(rng.choice(len(data), 50 * k, replace=False))]
    seeds, _ = kmeans2(subset, k, iter=1, minit="++", seed=seed, missing="raise")
    centres, _ = kmeans2(data, seeds, iter=iterations, minit="matrix", missing="warn")
    return centres.astype(np.float32)


def vlad(descriptors: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """(N, D) local descriptors -> (K * D,) float32 VLAD vector.

    Residuals to the nearest centre are summed per centre, signed-square-rooted, L2-normalised
    per centre, and the whole is L2-normalised. No descriptors gives the zero vector.
    """
    k, dim = codebook.shape
    out = np.zeros((k, dim), np.float64)
    if len(descriptors):
        x = np.asarray(descriptors, np.float64)
        c = np.asarray(codebook, np.float64)
        d2 = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
        nearest = d2.argmin(1)
        np.add.at(out, nearest, x - c[nearest])
    out = np.sign(out) * np.sqrt(np.abs(out))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    flat = out.reshape(-1)
    total = np.linalg.norm(flat)
    return (flat / total if total > 0 else flat).astype(np.float32)


def _sample(reader: FeaturesReader, names: list[str], per_image: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = []
    for name in names:
        desc = reader.read(name).descriptors
        if len(desc) > per_image:
            desc = desc[np.sort(rng.choice(len(desc), per_image, replace=False))]
        parts.append(desc)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def local_header(
    config: LocalDescriptorConfig,
    features_hash: str,
    names: list[str],
    turns: dict[str, int] | None = None,
) -> Header:
    """The header of VLAD descriptors (settings, features hash, image list, and the quarter
    turn each image's features were extracted with: the upright stage re-extracts turned images
    under the same features hash, and their descriptors must follow)."""
    turns = turns or {}
    listed = "\n".join(f"{n}\t{turns[n]}" if turns.get(n) else n for n in names)
    images = hashlib.sha256(listed.encode()).hexdigest()
    return global_header(config, model="local", features_hash=features_hash, images_sha256=images)


def _is_current(path: Path, header: Header, names: list[str]) -> bool:
    """Whether `path` holds the VLAD descriptors of exactly `names` under `header`."""
    if not path.exists():
        return False
    try:
        if read_header(path, GLOBAL_SCHEMA).config_hash != header.config_hash:
            return False
        with GlobalDescriptorsReader(path) as r:
            return set(r.names()) == set(names)
    except Exception:  # any unreadable old file is rebuilt
        logger.debug("Rebuilding %s", path, exc_info=True)
        return False


def compute_local_descriptors(
    features_path: Path,
    names: list[str],
    output_dir: Path,
    config: LocalDescriptorConfig = LocalDescriptorConfig(),
    *,
    file_name: str = paths.GLOBAL_LOCAL,
) -> tuple[Path, list[str]]:
    """Write VLAD descriptors of `names` to ``output_dir/file_name``; return the path and the
    names (in the order given) of the images that have local features. The vectors stay on
    disk: read them in blocks with :class:`~reconstruct.storage.GlobalDescriptorsReader`."""
    output_dir = Path(output_dir)
    path = output_dir / file_name
    start = time.perf_counter()
    with FeaturesReader(Path(features_path)) as reader:
        keep = [n for n in names if n in reader]
        turns = {n: int(reader.attrs(n).get("rotation", 0)) for n in keep}
        header = local_header(config, reader.config_hash, keep, turns)
        if not keep or _is_current(path, header, keep):
            return path, keep
        # A bounded sample, so the codebook costs the same for 1,000 images as for 300.
        per_image = max(1, min(config.sample_per_image, config.sample_total // len(keep)))
        sample = _sample(reader, keep, per_image, config.seed)
        codebook = fit_codebook(
            sample, config.codebook_size, iterations=config.iterations, seed=config.seed
        )
        # derived from features.h5 in seconds: rebuilt whole rather than resumed
        with ResultWriter(path, header, overwrite=True) as writer:
            for name in progress(keep, desc="local global descriptors", unit="img"):
                writer.add((name,), {"descriptor": vlad(reader.read(name).descriptors, codebook)})
    logger.info(
        "Computed VLAD descriptors (%d centres, from local features) of %d images in %.1f s",
        len(codebook),
        len(keep),
        time.perf_counter() - start,
    )
    return path, keep
