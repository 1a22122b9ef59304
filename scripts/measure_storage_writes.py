"""How many results per second the driver can write through the storage layer.

The Ray driver is the only writer: each finished pair (or image) goes through
`storage.ResultWriter.add` (one part file, written atomically with an fsync), and at the end of
the stage `finalize` folds the parts into the HDF5 file. This times both for matches-like items
(K matches: uint32 (K, 2) + float32 (K,)) and features-like items (N keypoints with D-dim
descriptors), and prints the message size of each item computed from its arrays.

Usage::

    python scripts/measure_storage_writes.py [--items 500] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reconstruct.storage import FEATURES_SCHEMA, MATCHES_SCHEMA, Header, ResultWriter


def measure(folder: Path, kind: str, items: int, size: int, dim: int) -> dict:
    """Seconds to add `items` results of `kind` (matches or features) and to fold them."""
    rng = np.random.default_rng(0)
    if kind == "matches":
        schema, name = MATCHES_SCHEMA, "matches.h5"
        arrays = {
            "matches": rng.integers(0, 2048, (size, 2)).astype(np.uint32),
            "scores": rng.random(size).astype(np.float32),
        }
    else:
        schema, name = FEATURES_SCHEMA, "features.h5"
        arrays = {
            "keypoints": rng.random((size, 2)).astype(np.float32),
            "descriptors": rng.random((size, dim)).astype(np.float32),
            "scores": rng.random(size).astype(np.float32),
        }
    message = sum(a.nbytes for a in arrays.values())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    header = Header(schema, {"bench": kind}, f"bench-{kind}")
    writer = ResultWriter(folder / name, header)
    t0 = time.perf_counter()
    for i in range(items):
        key = (f"img{i:06d}.jpg", f"img{i + 1:06d}.jpg") if kind == "matches" else (f"{i}.jpg",)
        writer.add(key, arrays, {"rotation0": 0} if kind == "matches" else {"image_size": (1, 1)})
    t1 = time.perf_counter()
    writer.finalize()
    t2 = time.perf_counter()
    return {
        "kind": kind,
        "items": items,
        "message_bytes": message,
        "add_per_s": items / (t1 - t0),
        "fold_per_s": items / (t2 - t1),
        "file_mb": (folder / name).stat().st_size / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="storage-writes-"))
    print(f"work folder {work}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = [
        measure(work / "m", "matches", args.items, 1000, 0),  # ~1,000 matches per pair
        measure(work / "f", "features", max(1, args.items // 5), 1024, 128),  # ALIKED-n16
    ]
    for r in rows:
        print(
            f"{r['kind']:>8}: {r['message_bytes'] / 1024:7.1f} KB per item; add "
            f"{r['add_per_s']:7.1f} items/s (part file + fsync), fold {r['fold_per_s']:8.1f} "
            f"items/s into HDF5 ({r['items']} items, {r['file_mb']:.1f} MB)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
