"""Global image descriptors with DINOv2, written to ``global.h5`` (used by ``pairs.py``, which
holds the pair-selection rules; ``aggregation.py`` computes the local-feature alternative).

Each image is resized (aspect ratio kept) so its long side is ``resolution`` pixels and both
sides are multiples of the 14-pixel patch, normalised with the ImageNet mean and std, and run
through the backbone once. The final-norm token sequence is pooled into one vector (CLS token,
max over patch tokens, or GeM over patch tokens), L2-normalised and stored as
``/<key(name)>/descriptor`` float32 (D,). The file's config hash covers only what changes the
descriptors (backbone, resolution, pooling and the SHA-256 of the weights file), so changing the
pair-selection rules never recomputes them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import paths
from .config import config_hash, option, to_dict
from .errors import ImageReadError
from .executors import batched
from .images import prefetch, read_image
from .models import dinov2
from .models.dinov2 import Backbone, DinoModel, check_resolution, preprocess
from .progress import progress
from .storage import GLOBAL_SCHEMA, Header, ResultWriter, read_global_descriptors

logger = logging.getLogger(__name__)

Pooling = Literal["max", "cls", "gem"]


@dataclass(frozen=True, kw_only=True)
class RetrievalConfig:
    """Global descriptors for retrieval (`pairs.retrieval.*`)."""

    model: Literal["auto", "dinov2", "local"] = option(
        "auto",
        "auto (DINOv2 if its weights are on disk, else local), dinov2, or local "
        "(VLAD of the local features, no download)",
        hashed=False,
    )
    backbone: Backbone = option(
        "vitb14", "DINOv2 backbone: vit{s,b,l,g}14, with _reg for the 4-register variants"
    )
    resolution: int = option(
        336, "long side given to DINOv2, pixels, a multiple of 14 (aspect ratio is kept)"
    )
    pooling: Pooling = option(
        "max", "descriptor: max over patch tokens (IMC baselines), cls token, or gem over patches"
    )
    gem_p: float = option(3.0, "GeM exponent (pooling=gem)")
    weights: Path | None = option(
        None,
        "weights file (official Meta .pth or timm .safetensors); default: cache, then download",
        hashed=False,
    )
    download: bool = option(
        True, "download missing weights into the cache (RECONSTRUCT_CACHE)", hashed=False
    )
    batch_size: int = option(4, "images per forward pass (same-size images only)", hashed=False)
    workers: int = option(1, "background threads decoding images", hashed=False)

    def __post_init__(self) -> None:
        check_resolution(self.resolution)
        if self.gem_p <= 0:
            raise ValueError(f"gem_p must be positive, got {self.gem_p}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")


# ----------------------------------------------------------------------------- model


def pool_tokens(tokens, num_prefix_tokens: int, pooling: str, gem_p: float = 3.0):
    """(B, T, D) final-norm tokens -> (B, D) L2-normalised descriptors.

    Tokens are [CLS, registers..., patches...]; `num_prefix_tokens` counts CLS and registers.
    """
    import torch
    from torch.nn.functional import normalize

    patches = tokens[:, num_prefix_tokens:]
    if pooling == "cls":
        desc = tokens[:, 0]
    elif pooling == "max":
        desc = patches.max(dim=1).values
    elif pooling == "gem":
        desc = patches.clamp(min=1e-6).pow(gem_p).mean(dim=1).pow(1.0 / gem_p)
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    return normalize(desc.to(torch.float32), dim=-1)


def describe_batch(
    model: DinoModel, batch: np.ndarray, pooling: str = "max", gem_p: float = 3.0
) -> np.ndarray:
    """(B, 3, h, w) preprocessed images -> (B, D) float32 L2-normalised descriptors."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(model.device)
    with torch.inference_mode():
        tokens = model.module.forward_features(x)
        desc = pool_tokens(tokens, model.num_prefix_tokens, pooling, gem_p)
    return desc.cpu().numpy().astype(np.float32)


def global_header(config: Any, **extra: str) -> Header:
    """The header of a global-descriptors file, for DINOv2 and the local VLAD alike: the
    descriptor settings plus `extra` (what else the vectors depend on), hashed together."""
    return Header(
        GLOBAL_SCHEMA, {**to_dict(config), **extra}, config_hash(config, **extra), extra=extra
    )


def descriptor_header(config: RetrievalConfig, weights_id: str) -> Header:
    """The ``global.h5`` header: hashed on the descriptor settings and the weights identity."""
    return global_header(config, weights_sha256=weights_id)


SETTING = "pairs.retrieval"
"""The settings prefix named in model errors."""
ALTERNATIVE = (
    "match every pair instead: --set pairs.strategy=exhaustive (N(N-1)/2 pairs: slow for large "
    "scenes)\n  - or use the descriptor that needs no download: --set pairs.retrieval.model=local"
)
"""The ways around DINOv2, named in model errors."""


def resolve_retrieval_weights(config: RetrievalConfig) -> tuple[Path, str]:
    """(weights path, SHA-256) for `config`: explicit file, cache, download, or a typed error."""
    return dinov2.weights_of(config, setting=SETTING, alternative=ALTERNATIVE)


def load_retrieval_model(config: RetrievalConfig, device: Any = "cpu") -> DinoModel:
    """The DINOv2 backbone of `config` (loaded once per process, see dinov2.load_model)."""
    return dinov2.load_model(config, device=device, setting=SETTING, alternative=ALTERNATIVE)


# ----------------------------------------------------------------------------- stage helper


def _batches(
    results: Iterator[tuple[str, Any]], batch_size: int
) -> Iterator[tuple[list[str], list[np.ndarray], list[tuple[str, ImageReadError]]]]:
    """Group consecutive preprocessed images of one shape into batches of at most batch_size.

    A batch never spans a multiple of batch_size positions of `results` (unreadable images
    count), so any run of whole batch_size blocks (a Ray shard, see `GlobalWorker`) is cut into
    the same batches as the whole list: the same forward passes, the same bits on CPU.
    """
    names: list[str] = []
    arrays: list[np.ndarray] = []
    failed: list[tuple[str, ImageReadError]] = []
    for i, (name, x) in enumerate(results):
        if i % batch_size == 0 and (arrays or failed):
            yield names, arrays, failed
            names, arrays, failed = [], [], []
        if isinstance(x, ImageReadError):
            failed.append((name, x))
            continue
        if isinstance(x, BaseException):
            raise x
        if arrays and x.shape != arrays[0].shape:
            yield names, arrays, failed
            names, arrays, failed = [], [], []
        names.append(name)
        arrays.append(x)
    if arrays or failed:
        yield names, arrays, failed


def _preprocessed(image_dir: Path, name: str, resolution: int) -> np.ndarray | ImageReadError:
    """The network input of one image, or its read error as a value."""
    try:
        return preprocess(read_image(image_dir / name), resolution)
    except ImageReadError as e:
        return e


def describe_images(
    model: DinoModel, batches: Iterator[tuple[list[str], list[np.ndarray], list]], config
) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """(name, descriptor, None) of each image of `batches` (from `_batches`), or (name, None,
    reason) for an unreadable one. The one computation of this stage: the local loop and the
    Ray workers (`GlobalWorker`) both call it."""
    for batch_names, arrays, failed in batches:
        for name, err in failed:
            yield name, None, err.reason
        if arrays:
            desc = describe_batch(model, np.stack(arrays), config.pooling, config.gem_p)
            for name, d in zip(batch_names, desc, strict=True):
                yield name, d.astype(np.float32), None


class GlobalWorker:
    """Global descriptors on a Ray actor: loads the weights file once, then takes shards of
    images (whole `batch_size` blocks, so its batches are the local loop's)."""

    def __init__(
        self,
        config: RetrievalConfig,
        device: str,
        image_dir: Path,
        weights_path: Path,
        weights_id: str,
    ) -> None:
        from .device import resolve_device
        from .errors import ModelWeightsError

        self.config, self.image_dir = config, Path(image_dir)
        # the driver's file: never the cache or a download on a node
        here = dataclasses.replace(config, weights=Path(weights_path), download=False)
        self.model = load_retrieval_model(here, resolve_device(device))
        if self.model.weights_id != weights_id:
            raise ModelWeightsError(
                f"the weights file {weights_path} on this Ray node differs from the driver's "
                f"(SHA-256 {self.model.weights_id[:12]}..., driver {weights_id[:12]}...); "
                "put the same file at that path on every node"
            )

    def process(self, shard: list[str]) -> list[tuple[str, np.ndarray | None, str | None]]:
        """(name, descriptor or None, reason or None) of each image of `shard`, in order."""
        results = ((n, _preprocessed(self.image_dir, n, self.config.resolution)) for n in shard)
        batches = _batches(results, self.config.batch_size)
        return list(describe_images(self.model, batches, self.config))


def compute_global_descriptors(
    image_dir: Path,
    names: list[str],
    output_dir: Path,
    config: RetrievalConfig = RetrievalConfig(),
    *,
    device: str = "auto",
    overwrite: bool = False,
    model: DinoModel | None = None,
    executor=None,
) -> tuple[Path, list[str], np.ndarray]:
    """Write the descriptors of `names` to ``output_dir/global.h5``; return the path and the
    (names, (N, D) float32) of the images that have one (unreadable images are left out).

    Resumes images already in the file (or left as parts by an interrupted run) when the
    descriptor config and weights are the same; refuses another config unless `overwrite`.
    The model is loaded once, and only when some image still needs a descriptor. `executor`
    (from `executors.make_executor`; None: in this process) says where the images are
    described: Ray actors each load the weights file resolved here once (it must be at the
    same path on every node) and read the images from `image_dir`; the file is the same.
    """
    from .device import resolve_device

    image_dir, output_dir = Path(image_dir), Path(output_dir)
    path = output_dir / paths.GLOBAL
    remote = executor is not None and executor.kind != "local"
    if remote and model is not None:
        raise ValueError("model= is an in-process model; a Ray executor loads its own")
    if model is None:
        weights_path, weights_id = resolve_retrieval_weights(config)
    else:
        if model.backbone != config.backbone:
            raise ValueError(f"model is {model.backbone}, config asks for {config.backbone}")
        weights_id = model.weights_id
    unreadable: list[str] = []
    with ResultWriter(path, descriptor_header(config, weights_id), overwrite=overwrite) as writer:
        todo = [n for n in names if (n,) not in writer.done]
        if todo:
            start = time.perf_counter()
            if model is None and not remote:
                model = load_retrieval_model(config, resolve_device(device))
            logger.info(
                "Computing DINOv2 %s descriptors (%s pooling, %d px) of %d images "
                "(%d already done) on %s",
                config.backbone,
                config.pooling,
                config.resolution,
                len(todo),
                len(names) - len(todo),
                f"{executor.num_workers} {executor.kind} workers" if remote else model.device,
            )

            def store(name: str, desc: np.ndarray | None, reason: str | None) -> None:
                if desc is None:
                    logger.warning("No global descriptor for %s: %s", name, reason)
                    unreadable.append(name)
                else:
                    writer.add((name,), {"descriptor": desc})

            with progress(total=len(todo), desc="global descriptors", unit="img") as bar:
                if remote:
                    worker = (config, device, image_dir, weights_path, weights_id)
                    for item in _describe_remote(executor, worker, todo, bar):
                        store(*item)
                else:
                    for item in _describe_here(model, image_dir, todo, config):
                        store(*item)
                        bar.update(1)
            logger.info(
                "Computed %d global descriptors in %.1f s",
                len(todo) - len(unreadable),
                time.perf_counter() - start,
            )
        else:
            logger.info("All %d images already have global descriptors in %s", len(names), path)
    return (path, *_stored(path, names))


def _describe_here(
    model: DinoModel, image_dir: Path, names: list[str], config: RetrievalConfig
) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """:func:`describe_images` of `names` in this process, decoding ahead in threads."""
    results = prefetch(
        lambda n: _preprocessed(image_dir, n, config.resolution),
        names,
        workers=config.workers,
        lookahead=2 * config.batch_size,
    )
    return describe_images(model, _batches(results, config.batch_size), config)


def _describe_remote(
    executor, worker: tuple, names: list[str], bar
) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """:func:`describe_images` of `names` on the executor's `GlobalWorker` actors (built from
    `worker`), in shards of whole batch_size blocks: the same batches as the local loop."""
    import torch  # the local loop's threads per batch: the same bits on CPU

    config = worker[0]
    shards = batched(names, config.batch_size * executor.extract_batch)
    jobs = ((len(shard), shard) for shard in shards)
    threads = torch.get_num_threads()
    for results in executor.map(GlobalWorker, worker, jobs, progress=bar, threads=threads):
        yield from results


def _stored(path: Path, names: list[str]) -> tuple[list[str], np.ndarray]:
    """The (names, (N, D) float32 descriptors) of those of `names` that `path` holds."""
    if not path.exists():  # every image unreadable: nothing was written
        return [], np.zeros((0, 0), np.float32)
    stored_names, stored = read_global_descriptors(path)
    index = {n: i for i, n in enumerate(stored_names)}
    keep = [n for n in names if n in index]
    desc = stored[[index[n] for n in keep]] if keep else np.zeros((0, stored.shape[1]), np.float32)
    return keep, desc
