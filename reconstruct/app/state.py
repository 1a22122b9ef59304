"""Stage order of the app: which stage needs which, what a session has finished, and the calls.

No Streamlit here, so the page's rules are tested without a browser.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .. import paths
from ..errors import InputError

STAGES = ("keypoints", "pairs", "matching", "mapping", "export")
"""The stages the page has a button for."""
PIPELINE_STAGES = ("keypoints", "pairs", "orientation", "matching", "mapping", "export")
"""The stages of ``Run all`` (`pipeline.run_pipeline`), in its order (the test compares it with
the order of the stage times in ``run.json``)."""
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
    "orientation": paths.ROTATIONS,
    "mapping": paths.SPARSE,
    "export": paths.PLY,
}
BAR_STAGES = {
    "keypoints": "keypoints",
    "global descriptors": "pairs",
    "local global descriptors": "pairs",
    "matching": "matching",
    "upright cue": "orientation",
    "upright votes": "orientation",
    "mapping": "mapping",
    "refining": "mapping",  # the keypoint refinement that mapping runs first
}
"""The stage each progress bar (its ``desc``) belongs to."""
UNIT_NAMES = {"img": "image", "pair": "pair", "frame": "frame", "keypoint": "keypoint"}


def done(output_dir: Path, incomplete: Iterable[str] = ()) -> list[str]:
    """The stages whose output exists in `output_dir`, except those marked `incomplete`.

    A cancelled stage keeps its finished items in its output file (so that a re-run resumes),
    so the file alone does not say the stage finished: the page marks it incomplete.
    """
    skip = set(incomplete)
    return [s for s in STAGES if s not in skip and (Path(output_dir) / PRODUCES[s]).exists()]


def check_can_run(
    stage: str, output_dir: Path | None, have_images: bool, incomplete: Iterable[str] = ()
) -> None:
    """Raise InputError saying which earlier stage to run when `stage` cannot run yet."""
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if not have_images or output_dir is None:
        raise InputError("no images yet: upload images, pick a folder or load the demo scene")
    skip = set(incomplete)
    for need in NEEDS[stage]:
        before = next(s for s, p in PRODUCES.items() if p == need)
        if not (Path(output_dir) / need).exists():
            raise InputError(
                f"cannot run {stage} before {before}: run '{before}' first (or 'Run all')"
            )
        if before in skip:
            raise InputError(
                f"cannot run {stage}: {before} was cancelled before it finished; run "
                f"'{before}' again (it resumes) or 'Run all'"
            )


def incomplete_after_cancel(scope: str, bar: str) -> set[str]:
    """The stages a run of `scope` ("all" or one stage) leaves unfinished when it is cancelled
    in the progress bar named `bar`: that bar's stage and every later one of the run."""
    order = PIPELINE_STAGES if scope == "all" else (scope,)
    stage = BAR_STAGES.get(bar)
    if stage not in order:  # a bar we do not know: trust nothing of this run
        return set(order)
    return set(order[order.index(stage) :])


def current_stage(scope: str, bar: str | None, finished: Iterable[str]) -> str:
    """The stage a run of `scope` is in, from its latest progress bar and the stages whose output
    was written during the run (stages without a bar show up only through their output)."""
    order = PIPELINE_STAGES if scope == "all" else (scope,)
    index = 0
    if bar is not None and BAR_STAGES.get(bar) in order:
        index = order.index(BAR_STAGES[bar])
    for s in finished:
        if s in order:
            index = max(index, min(order.index(s) + 1, len(order) - 1))
    return order[index]


def step_text(stage: str, done_: int, total: int | None, unit: str) -> str:
    """``"matching: pair 12/28"`` (``"keypoints: 3 images"`` when the total is unknown)."""
    noun = UNIT_NAMES.get(unit, unit)
    if total:
        return f"{stage}: {noun} {min(done_, total)}/{total}"
    return f"{stage}: {done_} {noun}s"


WARNING_PREFIXES = ("Rescue:", "Contrast rescue:", "Not one model:", "Warning:")
"""Lines of `RunSummary.format` the page shows below a full run's outcome: what the rescues
did and the warnings."""


def summary_message(summary) -> str:
    """A full run's outcome for the page: the summary's first line (registered images,
    points), then what the rescues did and its warnings (a split scene, a model that
    contradicts its matches), one per line."""
    first, *rest = summary.format().splitlines()
    return "\n".join([first, *(line for line in rest if line.startswith(WARNING_PREFIXES))])


def run_stage(stage: str, image_dir: Path | None, output_dir: Path, config) -> str:
    """Run one stage (or "all") with the library function the CLI calls; returns a message."""
    from ..export import export_model
    from ..keypoints import extract_keypoints
    from ..mapping import contradiction_warning, is_consistent, read_consistency, run_mapping
    from ..matching import match_pairs
    from ..pairs import select_pairs
    from ..pipeline import run_pipeline

    out = Path(output_dir)
    if stage == "all":
        if image_dir is None:
            raise InputError("no images yet: upload images, pick a folder or load the demo scene")
        return summary_message(run_pipeline(image_dir, out, config, device="cpu"))
    check_can_run(stage, out if image_dir else None, image_dir is not None)
    out.mkdir(parents=True, exist_ok=True)
    f, p, m = out / paths.FEATURES, out / paths.PAIRS, out / paths.MATCHES
    if stage == "keypoints":
        extract_keypoints(image_dir, out, config.keypoints, device="cpu")
    elif stage == "pairs":
        select_pairs(image_dir, out, config.pairs, device="cpu")
    elif stage == "matching":
        match_pairs(p, f, out, config.matching, device="cpu")
    elif stage == "mapping":
        sparse = run_mapping(image_dir, f, m, out, config.mapping, pairs_path=p)
        report = read_consistency(sparse)
        if not is_consistent(report):  # the line a full run's summary shows
            return f"{stage} done\n{contradiction_warning(report['explained'])}"
    elif stage == "export":
        export_model(out / paths.SPARSE, out, config.export)
    return f"{stage} done"


def global_descriptors_path(output_dir: Path) -> Path | None:
    """The global descriptors the pairs stage used (named in its report), else any found."""
    import json

    out = Path(output_dir).resolve()
    try:
        report = json.loads((out / paths.PAIRS_REPORT).read_text())
        used = Path(report["global_descriptors"]).resolve()
        if used.is_file() and used.is_relative_to(out):
            return used
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no report yet, or one without descriptors: look for the files
    names = (paths.GLOBAL, paths.GLOBAL_LOCAL)
    return next((out / n for n in names if (out / n).is_file()), None)


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


def pair_inliers(
    output_dir: Path, ransac_threshold: float = 4.0
) -> list[tuple[int, int, str, str]]:
    """``(inliers, matches, name0, name1)`` of every matched pair, fewest inliers first.

    Inliers are those `viz.draw_matches` draws in green (`viz.fundamental_inliers`, MAGSAC++ at
    `ransac_threshold` px), so a pair's label and its picture agree.
    """
    from ..storage import FeaturesReader, MatchesReader
    from ..viz import fundamental_inliers

    out = Path(output_dir)
    rows = []
    with FeaturesReader(out / paths.FEATURES) as feats, MatchesReader(out / paths.MATCHES) as mr:
        keypoints: dict[str, np.ndarray] = {}
        for n0, n1 in mr.pairs():
            m, _ = mr.read(n0, n1)
            for n in (n0, n1):
                if n not in keypoints:
                    keypoints[n] = feats.read(n).keypoints
            k0, k1 = keypoints[n0][m[:, 0]], keypoints[n1][m[:, 1]]
            inl = fundamental_inliers(k0, k1, ransac_threshold)
            rows.append((int(inl.sum()), len(m), n0, n1))
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    return rows
