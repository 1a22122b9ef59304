"""Global image descriptors that need no download: VLAD over the local ALIKED descriptors.

A k-means codebook (``scipy.cluster.vq.kmeans2``, k-means++ start, fixed seed) is fitted on a
sample of the scene's own local descriptors from ``features.h5``. Each image's descriptors are
assigned to their nearest centre; the residuals are summed per centre, passed through a signed
square root (power law), L2-normalised per centre (intra-normalisation) and the concatenation is
L2-normalised, giving a (k * D,) float32 vector in ``global.h5`` (same contract as DINOv2). The
file's hash covers the settings, the features file's hash and the image list, since the codebook
depends on all of them; the file is rebuilt whenever one changes (it costs seconds).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import paths
from .config import config_hash, option, to_dict
from .storage import (
    GLOBAL_SCHEMA,
    FeaturesReader,
    Header,
    ResultWriter,
    read_global_descriptors,
    read_header,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LocalDescriptorConfig:
    """VLAD of the local features, no download (`pairs.local.*`)."""

    codebook_size: int = option(32, "k-means centres of the VLAD codebook")
    sample_per_image: int = option(300, "local descriptors per image used to fit the codebook")
    iterations: int = option(20, "k-means iterations")
    seed: int = option(0, "random seed of the sample and of the k-means start")

    def __post_init__(self) -> None:
        if self.codebook_size < 1:
            raise ValueError(f"codebook_size must be at least 1, got {self.codebook_size}")
        if self.sample_per_image < 1:
            raise ValueError(f"sample_per_image must be at least 1, got {self.sample_per_image}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")


def fit_codebook(sample: np.ndarray, k: int, *, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """(M, D) descriptors -> (min(k, M), D) float32 k-means centres (deterministic for a seed)."""
    from scipy.cluster.vq import kmeans2

    data = np.ascontiguousarray(sample, np.float64)
    k = min(k, len(data))
    if k < 1:
        raise ValueError("cannot fit a codebook on no descriptors")
    centres, _ = kmeans2(data, k, iter=iterations, minit="++", seed=seed, missing="raise")
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


def local_header(config: LocalDescriptorConfig, features_hash: str, names: list[str]) -> Header:
    """The ``global.h5`` header of VLAD descriptors (settings, features hash, image list)."""
    images = hashlib.sha256("\n".join(names).encode()).hexdigest()
    extra = {"model": "local", "features_hash": features_hash, "images_sha256": images}
    return Header(
        GLOBAL_SCHEMA,
        {**to_dict(config), **extra},
        config_hash(config, **extra),
        extra=extra,
    )


def compute_local_descriptors(
    features_path: Path,
    names: list[str],
    output_dir: Path,
    config: LocalDescriptorConfig = LocalDescriptorConfig(),
    *,
    file_name: str = paths.GLOBAL,
) -> tuple[Path, list[str], np.ndarray]:
    """Write VLAD descriptors of `names` to ``output_dir/file_name``; return the path and the
    (names, (N, K*D) float32) of the images that have local features."""
    output_dir = Path(output_dir)
    path = output_dir / file_name
    start = time.perf_counter()
    with FeaturesReader(Path(features_path)) as reader:
        keep = [n for n in names if n in reader]
        header = local_header(config, reader.config_hash, keep)
        if path.exists():
            try:
                if read_header(path, GLOBAL_SCHEMA).config_hash == header.config_hash:
                    stored_names, stored = read_global_descriptors(path)
                    if set(stored_names) == set(keep):
                        index = {n: i for i, n in enumerate(stored_names)}
                        return path, keep, stored[[index[n] for n in keep]]
            except Exception:  # any unreadable old file is rebuilt below
                logger.debug("Rebuilding %s", path, exc_info=True)
        if not keep:
            return path, [], np.zeros((0, 0), np.float32)
        sample = _sample(reader, keep, config.sample_per_image, config.seed)
        codebook = fit_codebook(
            sample, config.codebook_size, iterations=config.iterations, seed=config.seed
        )
        # derived from features.h5 in seconds: rebuilt whole rather than resumed
        with ResultWriter(path, header, overwrite=True) as writer:
            for name in tqdm(keep, desc="local global descriptors", unit="img"):
                writer.add((name,), {"descriptor": vlad(reader.read(name).descriptors, codebook)})
    logger.info(
        "Computed VLAD descriptors (%d centres, from local features) of %d images in %.1f s",
        len(codebook),
        len(keep),
        time.perf_counter() - start,
    )
    stored_names, stored = read_global_descriptors(path)
    index = {n: i for i, n in enumerate(stored_names)}
    return path, keep, stored[[index[n] for n in keep]]
