"""Rescue of weakly linked images: denser keypoints for the images mapping left out.

When the scene does not map whole (images outside the largest model, with the relaxed
initialisation of `mapping` already tried), a careful user extracts those images again with
more keypoints and matches their pairs again. `rescue_weak_images` does that once, with a
bounded cost, in its own folder ``rescue/``:

1. the images outside model 0 are extracted again with ``max_keypoints`` times
   `keypoints_factor` (``rescue/dense/features.h5``, an ordinary resumable features file);
2. ``rescue/features.h5`` holds those dense features and, copied unchanged, the run's own
   features of every other image (its header records both configurations and the dense images);
3. only the pairs touching a re-extracted image are matched again (``rescue/pairs.txt`` ->
   ``rescue/matches.h5``); every other pair keeps the run's matches, whose keypoint indices are
   still valid because those images' features are the same;
4. mapping runs again (``rescue/sparse``), each pair read from the rescue's matches first;
   its models replace ``sparse/`` only if they rank higher (more images in the largest model,
   then fewer models).

Extra cost: one extraction of the left-out images, and their pairs matched with one side
`keypoints_factor` times denser (LightGlue's cost grows with both sides' keypoints), at most
once per run. ``rescue/rescue.json`` records what was tried and kept; ``run.json`` has it too.

Faint texture: when the scene failed outright (the largest model `mapping.check_consistency`
flags, or one holding fewer than half of the images), `rescue_low_contrast` extracts every
image again with local contrast enhancement (``keypoints.contrast=clahe``), matches the run's
pairs again and maps once more in ``rescue/contrast/``, keeping the better result
(`mapping.is_better`). Extra cost: at most one more extraction, matching and mapping, only on
scenes that failed; ``rescue/contrast/contrast.json`` and ``run.json`` record it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import paths
from .config import config_hash, option
from .errors import MappingError, StorageError
from .keypoints import KeypointsConfig, extract_keypoints
from .mapping import (
    MappingConfig,
    Outcome,
    is_better,
    is_consistent,
    model_is_consistent,
    read_consistency,
    run_mapping,
    warn_if_contradicted,
)
from .matching import MatchingConfig, match_pairs
from .storage import (
    FEATURES_SCHEMA,
    MATCHES_SCHEMA,
    FeaturesReader,
    Header,
    MatchesReader,
    ResultWriter,
    atomic_write_json,
    read_header,
    read_pairs,
    write_pairs,
)

logger = logging.getLogger(__name__)

RESCUE_DIR = "rescue"
DENSE_DIR = "dense"
RESCUE_SUMMARY = "rescue.json"
CONTRAST_DIR = "contrast"
CONTRAST_SUMMARY = "contrast.json"


@dataclass(frozen=True, kw_only=True)
class RescueConfig:
    """Settings of the rescues of weak scenes (`rescue.*`)."""

    enabled: bool = option(True, "the rescues below (dense, contrast); false: none")
    # `dense` and `contrast` choose which rescues run, not what their files hold: not hashed
    dense: bool = option(
        True,
        "if images are left out of the largest model: extract them again with denser keypoints, "
        "match their pairs again and map once more, keeping the better result",
        hashed=False,
    )
    keypoints_factor: int = option(
        2, "the re-extracted images get keypoints.max_keypoints times this"
    )
    contrast: bool = option(
        True,
        "if the scene failed (the largest model contradicts its matches or holds fewer than "
        "half of the images): extract every image again with keypoints.contrast=clahe, match "
        "and map once more, keeping the better result",
        hashed=False,
    )

    def __post_init__(self) -> None:
        if self.keypoints_factor < 2:
            raise ValueError(f"keypoints_factor must be >= 2, got {self.keypoints_factor}")


def registered_in_largest(sparse_dir: Path) -> tuple[set[str], list[int]]:
    """(names of the images in model 0, registered images of every model) from the model
    folders of `sparse_dir`."""
    from .export import read_all_poses

    poses = read_all_poses(sparse_dir)
    return (set(poses[0]) if poses else set()), [len(p) for p in poses]


def _outcome(sizes: list[int], sparse_dir: Path) -> dict[str, Any]:
    """The `mapping.Outcome` of the models of `sparse_dir` (registered images `sizes`, largest
    first), as recorded in rescue.json."""
    largest = sizes[0] if sizes else 0
    report = read_consistency(sparse_dir)
    explained = float((report or {}).get("explained", 0.0))
    return dataclasses.asdict(Outcome(largest, len(sizes), is_consistent(report), explained))


def rescue_weak_images(
    image_dir: Path,
    output_dir: Path,
    features_path: Path,
    matches_path: Path,
    pairs_path: Path,
    sparse_dir: Path,
    *,
    keypoints: KeypointsConfig,
    matching: MatchingConfig,
    mapping: MappingConfig,
    config: RescueConfig = RescueConfig(),
    rotations: dict[str, int] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    executor=None,
) -> dict[str, Any] | None:
    """Extract the images outside model 0 of `sparse_dir` again with denser keypoints, match
    their pairs again and map again; the new models replace `sparse_dir` if they rank higher.
    Returns the record of what was done (also ``rescue/rescue.json``), or None when there was
    nothing to rescue (every readable image in model 0, rescue disabled, or features that
    cannot be made denser)."""
    if not (config.enabled and config.dense):
        return None
    if keypoints.extractor == "dinov2_patch":
        logger.info("Rescue skipped: the patch extractor has a fixed grid, not a keypoint budget")
        return None
    with FeaturesReader(features_path) as reader:
        readable = reader.names()
    registered, before = registered_in_largest(sparse_dir)
    weak = sorted(set(readable) - registered)
    pairs = read_pairs(pairs_path)
    weak_set = set(weak)
    weak_pairs = [p for p in pairs if p[0] in weak_set or p[1] in weak_set]
    if not weak or not weak_pairs:
        return None
    rescue_dir = Path(output_dir) / RESCUE_DIR
    dense = dataclasses.replace(
        keypoints, max_keypoints=keypoints.max_keypoints * config.keypoints_factor
    )
    logger.info(
        "Rescue: %d image(s) outside the largest model; extracting them with %d keypoints and "
        "matching their %d pair(s) again",
        len(weak),
        dense.max_keypoints,
        len(weak_pairs),
    )
    rotations = rotations or {}
    dense_path = extract_keypoints(
        image_dir, rescue_dir / DENSE_DIR, dense, image_names=weak, device=device,
        overwrite=overwrite, rotations={n: t for n, t in rotations.items() if n in weak_set},
        executor=executor,
    )  # fmt: skip
    combined = _combine_features(
        features_path, dense_path, weak, rescue_dir / paths.FEATURES, config
    )
    combined_hash = read_header(combined, FEATURES_SCHEMA).config_hash
    rescue_pairs = write_pairs(rescue_dir / paths.PAIRS, weak_pairs)
    # The rescue's matches resume only if they were made from these very features: another
    # set of left-out images (mapping is not bit-reproducible across runs) makes them stale.
    stale = overwrite or _matched_from(rescue_dir / paths.MATCHES) not in (None, combined_hash)
    rescue_matches = match_pairs(
        rescue_pairs, combined, rescue_dir, matching, device=device, overwrite=stale,
        executor=executor,
    )  # fmt: skip
    record: dict[str, Any] = {
        "images": weak,
        "max_keypoints": dense.max_keypoints,
        "pairs_matched_again": len(weak_pairs),
        "before": _outcome(before, sparse_dir),
    }
    _map_and_keep(
        record, sparse_dir, image_dir, combined, [rescue_matches, matches_path], rescue_dir,
        mapping, pairs_path,
    )  # fmt: skip
    logger.info("Rescue: %s", {k: v for k, v in record.items() if k != "images"})
    atomic_write_json(rescue_dir / RESCUE_SUMMARY, record)
    return record


def rescue_low_contrast(
    image_dir: Path,
    output_dir: Path,
    features_path: Path,
    pairs_path: Path,
    sparse_dir: Path | None,
    *,
    keypoints: KeypointsConfig,
    matching: MatchingConfig,
    mapping: MappingConfig,
    config: RescueConfig = RescueConfig(),
    rotations: dict[str, int] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    executor=None,
) -> dict[str, Any] | None:
    """If the scene failed (model 0 of `sparse_dir` contradicts its matches, or holds fewer
    than half of the readable images; `sparse_dir` None: mapping built no model at all),
    extract every image again with local contrast enhancement, match the pairs of `pairs_path`
    again and map again; the new models replace ``output_dir/sparse`` if they rank higher.
    Returns the record (also ``rescue/contrast/contrast.json``), or None when it did not
    run."""
    if not (config.enabled and config.contrast) or keypoints.contrast != "none":
        return None
    if keypoints.extractor == "dinov2_patch":
        return None  # patch centres on a grid: nothing for the contrast to change
    with FeaturesReader(features_path) as reader:
        readable = reader.names()
    if sparse_dir is None:
        registered, before, consistent = set(), [], False
    else:
        registered, before = registered_in_largest(sparse_dir)
        consistent = model_is_consistent(sparse_dir)
    if consistent and 2 * len(registered) >= len(readable):
        return None
    folder = Path(output_dir) / RESCUE_DIR / CONTRAST_DIR
    enhanced = dataclasses.replace(keypoints, contrast="clahe")
    logger.info(
        "Rescue: the largest model %s; extracting all %d images again with local contrast "
        "enhancement (keypoints.contrast=clahe) and matching the pairs again",
        "contradicts its matches"
        if registered and not consistent
        else f"holds {len(registered)} images",
        len(readable),
    )
    # rescue/contrast/ is this run's private cache: files made with other settings (the run's
    # own files were made again since) are made again instead of refused
    features = extract_keypoints(
        image_dir, folder, enhanced, image_names=readable, rotations=rotations, device=device,
        overwrite=overwrite or _made_with_other(folder / paths.FEATURES, FEATURES_SCHEMA, enhanced),
        executor=executor,
    )  # fmt: skip
    features_hash = read_header(features, FEATURES_SCHEMA).config_hash
    stale = _made_with_other(folder / paths.MATCHES, MATCHES_SCHEMA, matching)
    stale = stale or _matched_from(folder / paths.MATCHES) not in (None, features_hash)
    matches = match_pairs(
        pairs_path, features, folder, matching, device=device, overwrite=overwrite or stale,
        executor=executor,
    )  # fmt: skip
    record: dict[str, Any] = {
        "keypoints_contrast": enhanced.contrast,
        "num_images": len(readable),
        "before": _outcome(before, sparse_dir)
        if sparse_dir
        else dataclasses.asdict(Outcome(0, 0, False)),
    }
    target = Path(output_dir) / paths.SPARSE
    _map_and_keep(record, target, image_dir, features, matches, folder, mapping, pairs_path)
    logger.info("Contrast rescue: %s", record)
    atomic_write_json(folder / CONTRAST_SUMMARY, record)
    return record


def _map_and_keep(
    record: dict[str, Any], sparse_dir: Path, image_dir: Path, features: Path, matches,
    folder: Path, mapping: MappingConfig, pairs_path: Path,
) -> None:  # fmt: skip
    """Map a rescue's features and matches in `folder` and move its models to `sparse_dir` if
    they rank higher than ``record["before"]`` (`mapping.is_better`); fills in ``after`` and
    ``kept`` (``error`` if the rescue's mapping failed: the run's models stay)."""
    try:
        new_sparse = run_mapping(
            image_dir, features, matches, folder, mapping, pairs_path=pairs_path, warn=False
        )
    except MappingError as e:
        record.update(after=None, kept=False, error=str(e).splitlines()[0])
        return
    record["after"] = _outcome(registered_in_largest(new_sparse)[1], new_sparse)
    record["kept"] = is_better(Outcome(**record["after"]), Outcome(**record["before"]))
    if record["kept"]:
        paths.replace_dir(new_sparse, sparse_dir)
        warn_if_contradicted(sparse_dir)


def _made_with_other(path: Path, schema: str, config) -> bool:
    """Whether the file at `path` exists with a header of another configuration than
    `config` (False when it is missing or unreadable: the writer decides then)."""
    try:
        return read_header(path, schema).config_hash != config_hash(config)
    except (OSError, StorageError):
        return False


def _combine_features(
    base: Path, dense: Path, weak: list[str], out: Path, config: RescueConfig
) -> Path:
    """``rescue/features.h5``: the dense features of `weak`, every other image's features from
    `base` unchanged (`FeaturesReader.read_item`, so the run's matches index them still). Its
    header records both files' configurations and the dense images, so the rescue's matches
    resume only when all three are the same."""
    base_config = dict(read_header(base, FEATURES_SCHEMA).config)
    dense_config = dict(read_header(dense, FEATURES_SCHEMA).config)
    settings = {
        "extractor": base_config.get("extractor", "aliked"),  # what matching reads
        "base": base_config,
        "dense": dense_config,
        "dense_images": weak,
    }
    dense_images = set(weak)  # the dense file may hold images of an earlier rescue too
    with FeaturesReader(base) as b, FeaturesReader(dense) as d:
        names = b.names() + list(b.failed())
        # what each copied item was made from (image content, turn): an image extracted again
        # since (a changed file, a turn found) makes this file stale like a changed setting
        made_from = {
            n: [str((d if n in dense_images else b).attrs(n).get(k, "")) for k in _ITEM_KEYS]
            for n in names
        }
        digest = config_hash(
            config, base=base_config, dense=dense_config, dense_images=weak, items=made_from
        )
        if out.is_file() and read_header(out, FEATURES_SCHEMA).config_hash == digest:
            return out  # the same settings, images and items
        with ResultWriter(out, Header(FEATURES_SCHEMA, settings, digest), overwrite=True) as w:
            for name in names:
                w.add((name,), *(d if name in dense_images else b).read_item(name))
    return out


_ITEM_KEYS = ("fingerprint", "rotation", "error")


def _matched_from(matches_path: Path) -> str | None:
    """The features hash a matches file was made from (None if there is no readable file)."""
    try:
        with MatchesReader(matches_path) as m:
            return m.features_hash
    except (OSError, StorageError):
        return None
