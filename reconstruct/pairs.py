"""Stage 2: choose the image pairs to match, written to ``pairs.txt``.

`select_pairs(image_dir, output_dir, config)` returns the path of the pairs file: one
``name0 name1 [score]`` line per unordered pair, name0 < name1, no duplicates, no self-pairs;
the score is the cosine similarity of the two images' DINOv2 descriptors when they were computed.
It also writes ``pairs_report.json`` (pairs kept against exhaustive, per-image degree, images that
needed a fallback) and, for the strategies that use descriptors, the global descriptors:
``global.h5`` (DINOv2) or ``global-local.h5`` (local VLAD), one file per model so that switching
models in one output folder needs no --overwrite and each resumes.

Strategies (see docs/retrieval.md):

* ``exhaustive``: every pair.
* ``retrieval``: each image keeps its `top_k` most similar images, filtered by `threshold`,
  with at least `min_pairs` whatever the threshold; user pairs are merged in; then components
  are bridged by their most similar cross pairs so no image or group is left disconnected.
* ``sequential``: frames (in natural name order) are paired with the next `window` frames, plus
  `loop_top_k` retrieval neighbours outside the window when `loop_closure` is on.
* ``auto`` (default): exhaustive below `exhaustive_if_less` images, retrieval from there on.

Every strategy other than ``exhaustive`` is exhaustive below `exhaustive_if_less` images, and
then needs no model. Above it the global descriptor is `pairs.retrieval.model`: ``auto`` takes
DINOv2 when its weights are on disk, else the local VLAD descriptor (one WARNING); an explicit
``dinov2`` without weights is a ModelWeightsError with the fix, raised by :func:`check_models`
before any extraction when the pipeline calls it.

The selection rules are pure functions of a similarity matrix (numpy only, no torch), computed
in row blocks from the descriptors so scenes of any size never hold the N x N matrix; the
descriptors themselves are read from their file into a temporary memory map and used in blocks
(:func:`descriptor_matrix`), so the memory held does not grow with the number of images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from . import paths
from .aggregation import LocalDescriptorConfig
from .config import config_hash, option, to_dict
from .errors import InputError, StorageError
from .images import list_images
from .retrieval import RetrievalConfig, resolve_retrieval_weights
from .storage import (
    GLOBAL_SCHEMA,
    PAIRS_SCHEMA,
    SCHEMA_VERSION,
    GlobalDescriptorsReader,
    atomic_write_json,
    read_header,
    read_pairs,
    write_pairs,
)

logger = logging.getLogger(__name__)


Metric = Literal["cosine", "l1", "l2", "linf"]


@dataclass(frozen=True, kw_only=True)
class PairsConfig:
    """Settings of the pair-selection stage (`pairs.*`)."""

    strategy: Literal["auto", "exhaustive", "retrieval", "sequential"] = option(
        "auto",
        "auto (exhaustive below exhaustive_if_less images, else retrieval), exhaustive, "
        "retrieval (global-descriptor shortlist) or sequential (ordered frames)",
    )
    exhaustive_if_less: int = option(
        20, "scenes with fewer images get every pair (no model needed), whatever the strategy"
    )
    # 10, not hloc's 20: a pair is kept when either image keeps it, so 20 is 89% of the pairs of
    # a 25-image scene (Herz-Jesu-P25, local VLAD) and 10 is 46%; see docs/retrieval.md.
    top_k: int | None = option(
        10, "retrieval: each image keeps at most this many most similar images (None: no cap)"
    )
    metric: Metric = option(
        "cosine",
        "similarity for ranking and threshold: cosine, or l1/l2/linf distance between the "
        "L2-normalised descriptors",
    )
    threshold: float | None = option(
        None,
        "retrieval: keep a neighbour only if cosine >= threshold, or distance <= threshold for "
        "l1/l2/linf (IMC baselines' 'similarity threshold' 0.6 is an l2 distance); None: off",
    )
    min_pairs: int = option(
        10,
        "retrieval: every image keeps at least this many most similar images, even below "
        "the threshold",
    )
    connect: bool = option(
        True, "bridge disconnected groups with their most similar cross pairs (no isolated image)"
    )
    window: int = option(10, "sequential: pair each frame with the next `window` frames")
    loop_closure: bool = option(
        True, "sequential: add retrieval neighbours outside the window (pairs.retrieval.model)"
    )
    loop_top_k: int = option(5, "sequential: retrieval neighbours per frame for loop closure")
    extra_pairs: Path | None = option(
        None, "pairs file (name0 name1 per line) merged into the selection"
    )
    retrieval: RetrievalConfig = option(
        RetrievalConfig(), "DINOv2 global descriptors (pairs.retrieval.*)"
    )

    local: LocalDescriptorConfig = option(
        LocalDescriptorConfig(), "VLAD of the local features (pairs.retrieval.model=local)"
    )

    def __post_init__(self) -> None:
        if self.exhaustive_if_less < 0:
            raise ValueError(f"exhaustive_if_less must be 0 or more, got {self.exhaustive_if_less}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1 or None, got {self.top_k}")
        if self.min_pairs < 0:
            raise ValueError(f"min_pairs must be 0 or more, got {self.min_pairs}")
        if self.top_k is not None and self.min_pairs > self.top_k:
            raise ValueError(
                f"min_pairs ({self.min_pairs}) cannot exceed top_k ({self.top_k}); "
                "raise top_k or set it to None"
            )
        if self.threshold is not None:
            if self.metric == "cosine" and not -1.0 <= self.threshold <= 1.0:
                raise ValueError(
                    f"a cosine threshold must be in [-1, 1], got {self.threshold}; "
                    "for a distance, set pairs.metric=l2 (or l1, linf)"
                )
            if self.metric != "cosine" and self.threshold < 0:
                raise ValueError(f"a {self.metric} distance threshold must be >= 0")
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if self.loop_top_k < 1:
            raise ValueError(
                f"loop_top_k must be at least 1, got {self.loop_top_k} "
                "(turn loop closure off with loop_closure=false)"
            )


# ----------------------------------------------------------------------------- similarity


SCORE_BUDGET = 1 << 22
"""Scores held at once (16 MB in float32): a row block has SCORE_BUDGET // N rows (at most
1,024)."""
COLUMN_BUDGET = 1 << 22
"""Descriptor entries (16 MB in float32) a memory-mapped matrix is read in at once."""


class PairScores:
    """Pairwise similarity of N images (higher = more similar), served in row blocks.

    For ``cosine`` the score is the dot product of the L2-normalised descriptors; for the
    distances ``l1``, ``l2``, ``linf`` it is minus the distance, so every rule ranks by "higher
    is better" and a distance threshold t becomes the score cut-off -t. The diagonal is -inf.
    """

    def __init__(
        self,
        n: int,
        rows_fn,
        *,
        block: int = 1024,
    ) -> None:
        self.n = n
        self._rows_fn = rows_fn
        self.block = max(1, block)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> PairScores:
        """Scores given as an (N, N) matrix (higher = more similar); used by tests."""
        m = np.asarray(matrix, np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"a score matrix must be square, got {m.shape}")
        return cls(len(m), lambda a, b: m[a:b].copy())

    @classmethod
    def from_descriptors(
        cls, descriptors: np.ndarray, metric: str = "cosine", *, block: int | None = None
    ) -> PairScores:
        """Scores of L2-normalised descriptors (N, D) under `metric`.

        `descriptors` may be a memory map (:func:`descriptor_matrix`): it is then read in row
        and column blocks, so what is held at once is bounded whatever N. Row blocks hold at
        most SCORE_BUDGET scores (`block` rows if given).
        """
        if isinstance(descriptors, np.memmap):
            d = descriptors
        else:
            d = np.asarray(descriptors)
            if d.dtype != np.float32:
                d = d.astype(np.float64)
        # float32 descriptors (what the global-descriptor files store) are scored in float32:
        # twice the speed and half the memory of float64, for rankings that differ only for
        # scores closer than float32's resolution (1e-7).
        dtype = np.float32 if d.dtype == np.float32 else np.float64
        if d.ndim != 2:
            raise ValueError(f"descriptors must be (N, D), got {d.shape}")
        n, dim = d.shape
        if block is None:
            block = max(1, min(1024, SCORE_BUDGET // max(1, n)))
        if metric == "cosine":

            def score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
                return x @ y.T

        else:
            from scipy.spatial.distance import cdist

            name = {"l1": "cityblock", "l2": "euclidean", "linf": "chebyshev"}.get(metric)
            if name is None:
                raise ValueError(f"unknown metric {metric!r}")

            def score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
                return -cdist(x, y, name)

        cols = max(1, COLUMN_BUDGET // max(1, dim))

        def rows(a: int, b: int) -> np.ndarray:
            x = np.asarray(d[a:b], dtype)
            if n <= cols:
                return score(x, np.asarray(d, dtype))
            out = np.empty((b - a, n), dtype)
            for c in range(0, n, cols):
                out[:, c : c + cols] = score(x, np.asarray(d[c : c + cols], dtype))
            return out

        return cls(n, rows, block=block)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Scores of rows start..stop-1 against every image, (stop - start, N), float32 for
        float32 descriptors and float64 otherwise."""
        s = np.asarray(self._rows_fn(start, stop))
        if s.dtype not in (np.float32, np.float64):
            s = s.astype(np.float64)
        if not s.flags.writeable or s.base is not None:  # a view: the diagonal is written below
            s = s.copy()
        idx = np.arange(start, stop)
        s[idx - start, idx] = -np.inf
        return s

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(start, rows) for consecutive row blocks covering every image."""
        for start in range(0, self.n, self.block):
            stop = min(self.n, start + self.block)
            yield start, self.rows(start, stop)


def score_cutoff(metric: str, threshold: float | None) -> float | None:
    """The threshold as a score cut-off (keep score >= cut-off): t for cosine, -t for distances."""
    if threshold is None:
        return None
    return float(threshold) if metric == "cosine" else -float(threshold)


def _ranked(row: np.ndarray, i: int, first: int | None = None) -> np.ndarray:
    """Other images by decreasing score, ties by lower index; only the `first` best if given.

    With `first`, a partition finds the `first`-th best score and only the images at or above
    it are sorted (O(N) instead of O(N log N) per row: at 10,000 images the full sort was a
    quarter of the selection's time); ties at that score still go to the lower index.
    """
    if first is not None and first + 1 < len(row):
        kth = np.partition(row, len(row) - first - 1)[len(row) - first - 1]
        candidates = np.flatnonzero(row >= kth)
        order = candidates[np.argsort(-row[candidates], kind="stable")]
        return order[order != i][:first]
    order = np.argsort(-row, kind="stable")
    return order[order != i]


def _canonical(i: int, j: int) -> tuple[int, int]:
    return (i, j) if i < j else (j, i)


# ----------------------------------------------------------------------------- selection rules


def exhaustive_pairs(names: list[str]) -> list[tuple[str, str]]:
    """All unordered pairs, each as (a, b) with a < b, sorted."""
    return list(itertools.combinations(sorted(set(names)), 2))


def neighbour_pairs(
    scores: PairScores,
    *,
    top_k: int | None,
    min_score: float | None = None,
    min_pairs: int = 0,
) -> tuple[set[tuple[int, int]], list[int]]:
    """Each image's most similar images: the first `top_k` (all if None) with score >= `min_score`,
    but at least the first `min_pairs` whatever their score.

    Returns the unordered index pairs (i < j) and the images for which `min_pairs` overrode
    the threshold (the "fallback" images).
    """
    pairs: set[tuple[int, int]] = set()
    fallback: list[int] = []
    floor = min(min_pairs, scores.n - 1)
    for start, block in scores.blocks():
        for r, row in enumerate(block):
            i = start + r
            ranked = _ranked(row, i, None if top_k is None else max(top_k, floor))
            chosen = ranked[:top_k] if top_k is not None else ranked
            if min_score is not None:
                chosen = chosen[row[chosen] >= min_score]
            if len(chosen) < floor:
                chosen = ranked[:floor]
                fallback.append(i)
            pairs.update(_canonical(i, int(j)) for j in chosen)
    return pairs, fallback


def sequential_pairs(n: int, window: int) -> set[tuple[int, int]]:
    """Each frame with the next `window` frames: (i, i + d) for d = 1..window."""
    return {(i, j) for i in range(n) for j in range(i + 1, min(n, i + window + 1))}


def loop_closure_pairs(
    scores: PairScores, *, window: int, top_k: int, min_score: float | None = None
) -> set[tuple[int, int]]:
    """Each frame's `top_k` most similar frames more than `window` frames away, each with
    score >= `min_score` when given."""
    pairs: set[tuple[int, int]] = set()
    for start, block in scores.blocks():
        for r, row in enumerate(block):
            i = start + r
            row = row.copy()
            row[max(0, i - window) : i + window + 1] = -np.inf
            ranked = _ranked(row, i, top_k)
            ranked = ranked[np.isfinite(row[ranked])]
            if min_score is not None:
                ranked = ranked[row[ranked] >= min_score]
            pairs.update(_canonical(i, int(j)) for j in ranked)
    return pairs


def components(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Connected-component label of each of the n images under `pairs`."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.array(sorted(pairs), np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def bridge_components(
    scores: PairScores, pairs: set[tuple[int, int]]
) -> tuple[set[tuple[int, int]], list[tuple[int, int, float]]]:
    """Add the most similar cross pairs until the pair graph is connected.

    Borůvka's algorithm on the components: each round, every component gets its most similar
    pair to another component, so the bridges form a maximum spanning tree over the components
    (the most similar links that connect the scene) in O(log C) passes over the scores.
    Returns the augmented pairs and the bridges (i, j, score) added.
    """
    n = scores.n
    pairs = set(pairs)
    bridges: list[tuple[int, int, float]] = []
    if n < 2:
        return pairs, bridges
    labels = components(n, pairs)
    while labels.max() > 0:
        k = int(labels.max()) + 1
        best_score = np.full(k, -np.inf)
        best_pair = np.full((k, 2), -1, np.int64)
        for start, block in scores.blocks():
            rows = np.arange(start, start + len(block))
            block = np.where(labels[None, :] == labels[rows][:, None], -np.inf, block)
            j = np.argmax(block, axis=1)  # first maximum: ties go to the lower index
            s = block[np.arange(len(block)), j]
            for i, jj, ss in zip(rows, j, s, strict=True):
                c = labels[i]
                if ss > best_score[c]:
                    best_score[c], best_pair[c] = ss, (i, jj)
        added = False
        for c in range(k):
            i, j = (int(v) for v in best_pair[c])
            if i < 0:  # cannot happen with finite scores; keeps a bad matrix from looping
                continue
            pair = _canonical(i, j)
            if pair not in pairs:
                pairs.add(pair)
                bridges.append((*pair, float(best_score[c])))
                added = True
        if not added:
            break
        labels = components(n, pairs)
    return pairs, bridges


def degrees(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Number of pairs each of the n images is in."""
    deg = np.zeros(n, np.int64)
    for i, j in pairs:
        deg[i] += 1
        deg[j] += 1
    return deg


def natural_key(name: str) -> list:
    """Sort key that orders frame_2 before frame_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# ----------------------------------------------------------------------------- stage


@dataclass
class Selection:
    """Chosen pairs (indices into the selection order, i < j) and how they were chosen."""

    pairs: set[tuple[int, int]]
    strategy_used: str
    fallback: list[int] = dataclasses.field(default_factory=list)  # min_pairs overrode threshold
    bridges: list[tuple[int, int, float]] = dataclasses.field(default_factory=list)
    components_before: int = 1
    extra: dict = dataclasses.field(default_factory=dict)  # what extra_pairs added


def _merge_extra_pairs(path: Path, index: dict[str, int], pairs: set[tuple[int, int]]) -> dict:
    """Add the pairs of a user file whose images are in the scene; say what was skipped."""
    try:
        user_pairs = read_pairs(path)
    except StorageError as e:
        raise InputError(f"pairs.extra_pairs: {e}") from None
    unknown: set[str] = set()
    added = 0
    for a, b in user_pairs:
        if a not in index or b not in index:
            unknown.update(n for n in (a, b) if n not in index)
            continue
        pair = _canonical(index[a], index[b])
        if pair not in pairs:
            pairs.add(pair)
            added += 1
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (" ..." if len(unknown) > 5 else "")
        logger.warning(
            "%s names %d images that are not in this scene (or have no descriptor); "
            "their pairs are skipped: %s",
            path,
            len(unknown),
            shown,
        )
    return {
        "file": str(path),
        "pairs_in_file": len(user_pairs),
        "added": added,
        "unknown_images": sorted(unknown),
    }


def needs_global_descriptors(config: PairsConfig, image_count: int) -> bool:
    """Whether a selection over `image_count` images computes global descriptors."""
    if config.strategy == "exhaustive" or image_count < config.exhaustive_if_less:
        return False
    return config.strategy in ("auto", "retrieval") or config.loop_closure


def _dinov2_weights_present(config: RetrievalConfig) -> bool:
    from .models import dinov2

    if config.weights is not None:
        return Path(config.weights).expanduser().is_file()
    return dinov2.find_cached(dinov2.get_spec(config.backbone)) is not None


_warned_auto = False


def resolve_retrieval_model(config: PairsConfig, *, warn: bool = True) -> str:
    """The global descriptor a run uses: ``dinov2`` or ``local`` (``auto`` checks presence of
    the DINOv2 weights on disk only, never downloads; one WARNING when it falls back)."""
    global _warned_auto
    choice = config.retrieval.model
    if choice != "auto":
        return choice
    if _dinov2_weights_present(config.retrieval):
        return "dinov2"
    if warn and not _warned_auto:
        from .models import dinov2

        _warned_auto = True
        spec = dinov2.get_spec(config.retrieval.backbone)
        logger.warning(
            "pairs.retrieval.model=auto: using the local descriptor (VLAD of the local "
            "features) because no DINOv2 %s weights are on disk (auto never downloads); to "
            "use DINOv2, download %s into %s/ (`reconstruct weights list` shows the files) or "
            "set pairs.retrieval.weights=PATH, or set pairs.retrieval.model=dinov2 to download",
            config.retrieval.backbone,
            spec.url,
            dinov2.weights_dir(),
        )
    return "local"


def check_models(config: PairsConfig, image_count: int) -> dict:
    """Fail fast, before any extraction: raise ModelWeightsError if the pair selection of
    `image_count` images will need DINOv2 weights that it cannot get. Returns
    ``{"retrieval_model": "dinov2" | "local" | None, "weights": str | None}`` (None: no global
    descriptor needed). An explicit ``dinov2`` resolves (and, if allowed, downloads) now."""
    if not needs_global_descriptors(config, image_count):
        return {"retrieval_model": None, "weights": None}
    model = resolve_retrieval_model(config)
    if model == "local":
        return {"retrieval_model": "local", "weights": None}
    path, _ = resolve_retrieval_weights(config.retrieval)  # its errors name the alternatives
    return {"retrieval_model": "dinov2", "weights": str(path)}


def select_pairs(
    image_dir: Path,
    output_dir: Path,
    config: PairsConfig = PairsConfig(),
    *,
    device: str = "auto",
    overwrite: bool = False,
    image_names: list[str] | None = None,
    features: Path | None = None,
    executor=None,
) -> Path:
    """Write ``output_dir/pairs.txt`` (and ``pairs_report.json``, and the global descriptors
    when they are needed) for the images in `image_dir`; return the pairs file's path.

    `executor` (from `executors.make_executor`) computes DINOv2 descriptors; None computes them
    here. The local descriptor aggregates features already on disk and always runs here."""
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    names = sorted(set(image_names if image_names is not None else list_images(image_dir)))
    strategy = _strategy_used(config, len(names))
    order = sorted(names, key=natural_key) if strategy == "sequential" else names
    desc = _global_descriptors(
        strategy,
        order,
        image_dir,
        output_dir,
        config,
        features=features,
        device=device,
        overwrite=overwrite,
        executor=executor,
    )
    sel, named, cosine = _choose_pairs(strategy, desc, config, output_dir)
    path = output_dir / paths.PAIRS
    _write_pairs_file(path, named, cosine, config, len(names), sel, desc)
    report = _report(names, desc.order, named, sel, config, desc.unreadable, desc.path)
    report["retrieval_model"] = desc.model
    if desc.model == "local":
        report["rules"]["backbone"] = None
    atomic_write_json(output_dir / paths.PAIRS_REPORT, report)
    _log_report(report)
    return path


def _strategy_used(config: PairsConfig, n: int) -> str:
    """`config.strategy`, or ``exhaustive`` (logged) for fewer than `exhaustive_if_less` images."""
    if config.strategy != "exhaustive" and n < config.exhaustive_if_less:
        logger.info(
            "%d images (< pairs.exhaustive_if_less=%d): matching every pair",
            n,
            config.exhaustive_if_less,
        )
        return "exhaustive"
    return config.strategy


@dataclass
class _Descriptors:
    """The global descriptors a selection uses, and the images it indexes."""

    order: list[str]  # the indexing of the selection: the images that have a descriptor
    model: str | None = None  # "dinov2", "local" or None (no descriptors)
    path: Path | None = None
    config_hash: str | None = None
    unreadable: list[str] = dataclasses.field(default_factory=list)


def _global_descriptors(
    strategy: str,
    order: list[str],
    image_dir: Path,
    output_dir: Path,
    config: PairsConfig,
    *,
    features: Path | None,
    device: str,
    overwrite: bool,
    executor,
) -> _Descriptors:
    """Compute (or resume) the global descriptors of `order` if `strategy` needs them."""
    needs_descriptors = strategy in ("auto", "retrieval") or (
        strategy == "sequential" and config.loop_closure
    )
    retrieval_model: str | None = None
    if needs_descriptors:
        retrieval_model = check_models(config, len(order))["retrieval_model"]
    if retrieval_model == "local":
        from .aggregation import compute_local_descriptors

        features_path = Path(features) if features is not None else output_dir / paths.FEATURES
        global_path, have = compute_local_descriptors(
            features_path, order, output_dir, config.local
        )
    elif retrieval_model == "dinov2":
        from .retrieval import compute_global_descriptors

        global_path, have, _ = compute_global_descriptors(
            image_dir, order, output_dir, config.retrieval, device=device, overwrite=overwrite,
            executor=executor,
        )  # fmt: skip
    else:
        return _Descriptors(order)
    global_hash = read_header(global_path, GLOBAL_SCHEMA).config_hash
    have_set = set(have)
    unreadable = [nm for nm in order if nm not in have_set]
    if unreadable:
        logger.warning(
            "%d images have no global descriptor (unreadable) and get no pairs: %s",
            len(unreadable),
            ", ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else ""),
        )
    return _Descriptors(have, retrieval_model, global_path, global_hash, unreadable)


def _choose_pairs(
    strategy: str, desc: _Descriptors, config: PairsConfig, output_dir: Path
) -> tuple[Selection, list[tuple[str, str]], np.ndarray | None]:
    """The selection, its pairs by name (sorted, name0 < name1) and their cosines (None
    without descriptors)."""
    order = desc.order
    descriptors: np.ndarray | None = None
    with contextlib.ExitStack() as stack:
        if desc.path is not None and order:
            descriptors = stack.enter_context(descriptor_matrix(desc.path, order, output_dir))
        sel = rule_pairs(strategy, len(order), config, descriptors)
        index = {nm: i for i, nm in enumerate(order)}
        if config.extra_pairs is not None:
            sel.extra = _merge_extra_pairs(Path(config.extra_pairs), index, sel.pairs)
        if config.connect and descriptors is not None:
            connect_selection(sel, descriptors, config.metric)
        named = sorted(
            (order[i], order[j]) if order[i] < order[j] else (order[j], order[i])
            for i, j in sel.pairs
        )
        cosine = None
        if descriptors is not None:
            idx0 = np.array([index[a] for a, _ in named], np.int64)
            idx1 = np.array([index[b] for _, b in named], np.int64)
            cosine = pair_cosines(descriptors, idx0, idx1)
    return sel, named, cosine


def _write_pairs_file(
    path: Path,
    named: list[tuple[str, str]],
    cosine: np.ndarray | None,
    config: PairsConfig,
    num_images: int,
    sel: Selection,
    desc: _Descriptors,
) -> None:
    """Write the pairs file with its header (config, strategy, score and descriptor identity)."""
    header = {
        "schema": PAIRS_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "config": to_dict(config),
        "config_hash": config_hash(config),
        "num_images": num_images,
        "strategy_used": sel.strategy_used,
        "score": f"cosine similarity of {desc.model} descriptors" if cosine is not None else "none",
        "retrieval_model": desc.model,
    }
    if desc.config_hash is not None:
        header["global_hash"] = desc.config_hash
    write_pairs(path, named, scores=cosine.tolist() if cosine is not None else None, header=header)


@contextlib.contextmanager
def descriptor_matrix(
    global_path: Path, names: list[str], scratch_dir: Path, *, chunk: int = 1024
) -> Iterator[np.ndarray]:
    """The (len(names), D) float32 descriptors of `names` from a global-descriptors file, as a
    memory map in a temporary file under `scratch_dir` (deleted on exit).

    The HDF5 file keeps one group per image, which is slow to read more than once; the map is
    filled in one pass of `chunk` images, so selection over any number of images holds only
    blocks of it in memory (and the OS may page the rest out).
    """
    with (
        GlobalDescriptorsReader(global_path) as reader,
        tempfile.TemporaryDirectory(dir=scratch_dir, prefix=".descriptors-") as tmp,
    ):
        dim = reader.read(names[:1]).shape[1] if names else 0
        matrix = np.lib.format.open_memmap(
            Path(tmp) / "descriptors.npy", mode="w+", dtype=np.float32, shape=(len(names), dim)
        )
        for start in range(0, len(names), chunk):
            matrix[start : start + chunk] = reader.read(names[start : start + chunk])
        matrix.flush()
        try:
            yield matrix
        finally:
            del matrix


def pair_cosines(
    descriptors: np.ndarray, idx0: np.ndarray, idx1: np.ndarray, *, chunk: int | None = None
) -> np.ndarray:
    """Cosine similarity of the pairs (idx0[k], idx1[k]) of L2-normalised descriptors, computed
    `chunk` pairs at a time (default: COLUMN_BUDGET entries per side; never (num_pairs, D))."""
    dim = descriptors.shape[1] if descriptors.ndim == 2 else 1
    chunk = chunk or max(1, COLUMN_BUDGET // (2 * max(1, dim)))
    out = np.zeros(len(idx0))
    for s in range(0, len(idx0), chunk):
        a = np.asarray(descriptors[idx0[s : s + chunk]], np.float64)
        b = np.asarray(descriptors[idx1[s : s + chunk]], np.float64)
        out[s : s + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def rule_pairs(
    strategy: str, n: int, config: PairsConfig, descriptors: np.ndarray | None = None
) -> Selection:
    """The pairs a strategy's rules give for n images (before extra pairs and bridging).

    `strategy` is the one actually used (``auto`` means retrieval here: the stage turns small
    scenes into ``exhaustive`` first). `descriptors` (n, D), L2-normalised, are needed by
    retrieval and by sequential loop closure.
    """
    if strategy == "exhaustive":
        return Selection(set(itertools.combinations(range(n), 2)), "exhaustive")
    cutoff = score_cutoff(config.metric, config.threshold)
    if strategy == "sequential":
        pairs = sequential_pairs(n, config.window)
        if config.loop_closure and descriptors is not None and n > 1:
            scores = PairScores.from_descriptors(descriptors, config.metric)
            pairs |= loop_closure_pairs(
                scores, window=config.window, top_k=config.loop_top_k, min_score=cutoff
            )
            return Selection(pairs, "sequential+loop_closure")
        return Selection(pairs, "sequential")
    if n < 2:
        return Selection(set(), "retrieval")
    if descriptors is None:
        raise ValueError(f"strategy {strategy!r} needs descriptors")
    scores = PairScores.from_descriptors(descriptors, config.metric)
    pairs, fallback = neighbour_pairs(
        scores, top_k=config.top_k, min_score=cutoff, min_pairs=config.min_pairs
    )
    return Selection(pairs, "retrieval", fallback=fallback)


def connect_selection(sel: Selection, descriptors: np.ndarray, metric: str = "cosine") -> Selection:
    """Bridge the components of `sel` in place (see :func:`bridge_components`); returns it."""
    n = len(descriptors)
    if n < 2:
        return sel
    sel.components_before = int(components(n, sel.pairs).max()) + 1
    if sel.components_before > 1:
        scores = PairScores.from_descriptors(descriptors, metric)
        sel.pairs, sel.bridges = bridge_components(scores, sel.pairs)
    return sel


def _report(
    names: list[str],
    order: list[str],
    named: list[tuple[str, str]],
    sel: Selection,
    config: PairsConfig,
    unreadable: list[str],
    global_path: Path | None,
) -> dict:
    n = len(names)
    degree = dict.fromkeys(names, 0)
    for a, b in named:
        degree[a] += 1
        degree[b] += 1
    values = np.array(list(degree.values()) or [0])
    exhaustive = n * (n - 1) // 2
    return {
        "strategy": config.strategy,
        "strategy_used": sel.strategy_used,
        "num_images": n,
        "num_pairs": len(named),
        "num_exhaustive_pairs": exhaustive,
        "fraction_of_exhaustive": round(len(named) / exhaustive, 6) if exhaustive else 0.0,
        "degree": {
            "min": int(values.min()),
            "median": float(np.median(values)),
            "max": int(values.max()),
        },
        "fallback_images": sorted(order[i] for i in sel.fallback),
        "components_before_bridging": sel.components_before,
        "bridging_pairs": [
            {"name0": min(order[i], order[j]), "name1": max(order[i], order[j]), "score": s}
            for i, j, s in sel.bridges
        ],
        "extra_pairs": sel.extra or None,
        "images_without_descriptor": unreadable,
        "global_descriptors": str(global_path) if global_path is not None else None,
        "rules": {
            "top_k": config.top_k,
            "metric": config.metric,
            "threshold": config.threshold,
            "min_pairs": config.min_pairs,
            "connect": config.connect,
            "window": config.window if sel.strategy_used.startswith("sequential") else None,
            "backbone": config.retrieval.backbone if global_path is not None else None,
        },
        "degree_per_image": degree,
    }


def _log_report(report: dict) -> None:
    d = report["degree"]
    logger.info(
        "Selected %d pairs (%s) for %d images: %.1f%% of the %d exhaustive pairs; "
        "pairs per image min %d, median %g, max %d",
        report["num_pairs"],
        report["strategy_used"],
        report["num_images"],
        100.0 * report["fraction_of_exhaustive"],
        report["num_exhaustive_pairs"],
        d["min"],
        d["median"],
        d["max"],
    )
    if report["fallback_images"]:
        logger.info(
            "%d images kept their min_pairs nearest neighbours below the threshold: %s",
            len(report["fallback_images"]),
            ", ".join(report["fallback_images"][:5])
            + (" ..." if len(report["fallback_images"]) > 5 else ""),
        )
    if report["bridging_pairs"]:
        logger.info(
            "Bridged %d disconnected groups with %d most-similar cross pairs",
            report["components_before_bridging"],
            len(report["bridging_pairs"]),
        )
