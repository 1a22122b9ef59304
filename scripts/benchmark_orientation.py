#!/usr/bin/env python
"""Benchmark of the upright stage's turn estimate (the SIFT cue and the solver) over seeds.

    python scripts/benchmark_orientation.py SCENE_DIR [--seeds 20] [--json out.json]

For each seed every image of `SCENE_DIR/images` is turned by a random quarter turn (no EXIF),
plus the arrangements "all but one turned" and "all turned by the same angle". All pairs vote
(`orientation.estimate_votes`), `orientation.solve_turns` solves, and the result is compared
with the truth: the correcting turns relative to the majority of the applied ones (on a tie, any
of the tied orientations is accepted). Prints per arrangement whether every turn was found, the
disagreeing votes and the seconds the cue took. Mapping and AUC are not run here (see
scripts/benchmark.py on a copy made by scripts/make_rotated_scene.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from reconstruct.images import list_images, read_image
from reconstruct.orientation import OrientationConfig, estimate_votes, solve_turns


def _arrangements(names: list[str], seeds: int) -> list[tuple[str, dict[str, int]]]:
    out = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        out.append((f"seed {seed}", {n: int(rng.integers(4)) for n in names}))
    out.append(("all but one (90)", {n: (1 if i else 0) for i, n in enumerate(names)}))
    out.append(("all the same (180)", dict.fromkeys(names, 2)))
    out.append(("none", dict.fromkeys(names, 0)))
    return out


def _correct(found: dict[str, int], applied: dict[str, int]) -> bool:
    tally = Counter(applied.values())
    top = max(tally.values())
    for reference in (r for r, c in tally.items() if c == top):
        if all(found[n] == (reference - a) % 4 for n, a in applied.items()):
            return True
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("scene", type=Path)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    names = list_images(args.scene / "images")
    pixels = {n: read_image(args.scene / "images" / n) for n in names}
    pairs = list(itertools.combinations(sorted(names), 2))
    config = OrientationConfig()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, applied in _arrangements(names, args.seeds):
            for n in names:
                out = np.ascontiguousarray(np.rot90(pixels[n], applied[n]))
                cv2.imwrite(str(Path(tmp) / n), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
            start = time.perf_counter()
            votes = estimate_votes(Path(tmp), pairs, config)
            seconds = time.perf_counter() - start
            found = solve_turns(names, votes)
            wrong_votes = sum(
                1
                for v in votes
                if v.weight > 0 and v.turn != (applied[v.name0] - applied[v.name1]) % 4
            )
            rows.append(
                {
                    "arrangement": label,
                    "correct": _correct(found, applied),
                    "votes": sum(1 for v in votes if v.weight > 0),
                    "wrong_votes": wrong_votes,
                    "seconds": round(seconds, 2),
                }
            )
            r = rows[-1]
            print(
                f"{label:20s} correct={r['correct']!s:5s} votes={r['votes']:3d} "
                f"wrong={r['wrong_votes']:2d} cue {r['seconds']:.2f} s",
                flush=True,
            )
    ok = sum(r["correct"] for r in rows)
    print(
        f"{args.scene.name}: {ok}/{len(rows)} arrangements with every turn right; cue "
        f"median {np.median([r['seconds'] for r in rows]):.2f} s for {len(names)} images, "
        f"{len(pairs)} pairs"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
