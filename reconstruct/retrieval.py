"""Global image descriptors with DINOv2, written to ``global.h5``.

Each image is resized (aspect ratio kept) so its long side is ``resolution`` pixels and both
sides are multiples of the 14-pixel patch, normalised with the ImageNet mean and std, and run
through the backbone once. The final-norm token sequence is pooled into one vector (CLS token,
max over patch tokens, or GeM over patch tokens), L2-normalised and stored as
``/<key(name)>/descriptor`` float32 (D,). The file's config hash covers only what changes the
descriptors (backbone, resolution, pooling and the SHA-256 of the weights file), so changing the
pair-selection rules never recomputes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from . import paths
from .config import config_hash, option, to_dict
from .errors import ImageReadError
from .images import prefetch, read_image
from .models.dinov2 import (  # noqa: F401 - Backbone, preprocess, target_size: re-exported
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    check_resolution,
    preprocess,
    target_size,
)
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


@dataclass
class DescriptorModel:
    """A loaded backbone plus what identifies its descriptors (for the config hash)."""

    model: Any  # timm VisionTransformer, eval mode
    backbone: str
    device: Any
    weights_id: str  # SHA-256 of the weights file ("random..." for timing runs)

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 1))

    def __call__(self, batch: np.ndarray, pooling: str = "max", gem_p: float = 3.0) -> np.ndarray:
        """(B, 3, h, w) preprocessed images -> (B, D) float32 L2-normalised descriptors."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
        with torch.inference_mode():
            tokens = self.model.forward_features(x)
            desc = pool_tokens(tokens, self.num_prefix_tokens, pooling, gem_p)
        return desc.cpu().numpy().astype(np.float32)


def descriptor_header(config: RetrievalConfig, weights_id: str) -> Header:
    """The ``global.h5`` header: hashed on the descriptor settings and the weights identity."""
    return Header(
        GLOBAL_SCHEMA,
        {**to_dict(config), "weights_sha256": weights_id},
        config_hash(config, weights_sha256=weights_id),
        extra={"weights_sha256": weights_id},
    )


def load_descriptor_model(config: RetrievalConfig, device: Any = "cpu") -> DescriptorModel:
    """Resolve the weights (explicit, cache, download, or a typed error) and load the model."""
    from .models import dinov2

    path = dinov2.resolve_weights(config.backbone, config.weights, download=config.download)
    sha = dinov2.weights_sha256(path)
    model = dinov2.load_backbone(config.backbone, path, device=device)
    return DescriptorModel(model, config.backbone, device, sha)


# ----------------------------------------------------------------------------- stage helper


def _batches(
    results: Iterator[tuple[str, Any]], batch_size: int
) -> Iterator[tuple[list[str], list[np.ndarray], list[tuple[str, ImageReadError]]]]:
    """Group consecutive preprocessed images of one shape into batches of at most batch_size."""
    names: list[str] = []
    arrays: list[np.ndarray] = []
    failed: list[tuple[str, ImageReadError]] = []
    for name, x in results:
        if isinstance(x, ImageReadError):
            failed.append((name, x))
            continue
        if isinstance(x, BaseException):
            raise x
        if arrays and (x.shape != arrays[0].shape or len(arrays) >= batch_size):
            yield names, arrays, failed
            names, arrays, failed = [], [], []
        names.append(name)
        arrays.append(x)
    if arrays or failed:
        yield names, arrays, failed


def compute_global_descriptors(
    image_dir: Path,
    names: list[str],
    output_dir: Path,
    config: RetrievalConfig = RetrievalConfig(),
    *,
    device: str = "auto",
    overwrite: bool = False,
    model: DescriptorModel | None = None,
) -> tuple[Path, list[str], np.ndarray]:
    """Write the descriptors of `names` to ``output_dir/global.h5``; return the path and the
    (names, (N, D) float32) of the images that have one (unreadable images are left out).

    Resumes images already in the file (or left as parts by an interrupted run) when the
    descriptor config and weights are the same; refuses another config unless `overwrite`.
    The model is loaded once, and only when some image still needs a descriptor.
    """
    from .device import resolve_device

    image_dir, output_dir = Path(image_dir), Path(output_dir)
    path = output_dir / paths.GLOBAL
    if model is None:
        from .models import dinov2

        weights = dinov2.resolve_weights(config.backbone, config.weights, download=config.download)
        weights_id = dinov2.weights_sha256(weights)
    else:
        if model.backbone != config.backbone:
            raise ValueError(f"model is {model.backbone}, config asks for {config.backbone}")
        weights, weights_id = None, model.weights_id
    unreadable: list[str] = []
    with ResultWriter(path, descriptor_header(config, weights_id), overwrite=overwrite) as writer:
        todo = [n for n in names if (n,) not in writer.done]
        if todo:
            start = time.perf_counter()
            if model is None:
                from .models import dinov2

                torch_device = resolve_device(device)
                module = dinov2.load_backbone(config.backbone, weights, device=torch_device)
                model = DescriptorModel(module, config.backbone, torch_device, weights_id)
            logger.info(
                "Computing DINOv2 %s descriptors (%s pooling, %d px) of %d images "
                "(%d already done) on %s",
                config.backbone,
                config.pooling,
                config.resolution,
                len(todo),
                len(names) - len(todo),
                model.device,
            )
            results = prefetch(
                lambda n: preprocess(read_image(image_dir / n), config.resolution),
                todo,
                workers=config.workers,
                lookahead=2 * config.batch_size,
            )
            with tqdm(total=len(todo), desc="global descriptors", unit="img") as bar:
                for batch_names, arrays, failed in _batches(results, config.batch_size):
                    for name, err in failed:
                        logger.warning("No global descriptor for %s: %s", name, err.reason)
                        unreadable.append(name)
                    if arrays:
                        desc = model(np.stack(arrays), config.pooling, config.gem_p)
                        for name, d in zip(batch_names, desc, strict=True):
                            writer.add((name,), {"descriptor": d.astype(np.float32)})
                    bar.update(len(batch_names) + len(failed))
            logger.info(
                "Computed %d global descriptors in %.1f s",
                len(todo) - len(unreadable),
                time.perf_counter() - start,
            )
        else:
            logger.info("All %d images already have global descriptors in %s", len(names), path)
    if not path.exists():  # every image unreadable: nothing was written
        return path, [], np.zeros((0, 0), np.float32)
    stored_names, stored = read_global_descriptors(path)
    index = {n: i for i, n in enumerate(stored_names)}
    keep = [n for n in names if n in index]
    desc = stored[[index[n] for n in keep]] if keep else np.zeros((0, stored.shape[1]), np.float32)
    return path, keep, desc
