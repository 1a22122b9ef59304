"""Stage order of the app: which stage needs which, and what a session has finished."""

from __future__ import annotations

from pathlib import Path

from .. import paths
from ..errors import InputError

STAGES = ("keypoints", "pairs", "matching", "mapping", "export")
# What each stage reads, as files in the output folder.
NEEDS = {
    "keypoints": (),
    "pairs": (paths.FEATURES,),
    "matching": (paths.FEATURES, paths.PAIRS),
    "mapping": (paths.FEATURES, paths.PAIRS, paths.MATCHES),
    "export": (paths.SPARSE,),
}
PRODUCES = {
    "keypoints": paths.FEATURES,
    "pairs": paths.PAIRS,
    "matching": paths.MATCHES,
    "mapping": paths.SPARSE,
    "export": paths.PLY,
}


def done(output_dir: Path) -> list[str]:
    """The stages whose output exists in `output_dir`."""
    return [s for s in STAGES if (Path(output_dir) / PRODUCES[s]).exists()]


def check_can_run(stage: str, output_dir: Path | None, have_images: bool) -> None:
    """Raise InputError saying which earlier stage to run when `stage` cannot run yet."""
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if not have_images or output_dir is None:
        raise InputError("no images yet: upload images, pick a folder or load the demo scene")
    for need in NEEDS[stage]:
        if not (Path(output_dir) / need).exists():
            before = next(s for s, p in PRODUCES.items() if p == need)
            raise InputError(
                f"cannot run {stage} before {before}: run '{before}' first (or 'Run all')"
            )


def threshold_preview(names: list[str], descriptors, config, threshold: float | None) -> dict:
    """What `threshold` would keep under the retrieval rules of `config` (a PairsConfig).

    Returns kept pair count, the images that fall back to ``min_pairs`` and whether the pair
    graph is connected (before bridging), computed by the pairs stage's own rules.
    """
    import dataclasses

    from ..pairs import components, rule_pairs

    cfg = dataclasses.replace(config, threshold=threshold)
    sel = rule_pairs("retrieval", len(names), cfg, descriptors)
    parts = int(components(len(names), sel.pairs).max()) + 1 if names else 0
    return {
        "pairs": len(sel.pairs),
        "fallback": [names[i] for i in sel.fallback],
        "components": parts,
        "connected": parts <= 1,
    }
