"""CPU throughput of the model stages: how many items (images, pairs) run at once, and
torch's intra-op thread count while they do.

On the CPU, ALIKED and LightGlue scale poorly across torch's intra-op threads (many
memory-bound element-wise ops, and an OpenMP barrier after each), while independent items
scale almost perfectly. So by default each CPU core runs one item on one torch thread, and
no OpenMP barrier is ever waited on, which also keeps the stages fast when other processes
hold the cores. Measured with scripts/profile_jobs.py on 4 Herz-Jesu-P8 photos (default
config, 2-core Xeon under heavy load, min of 2 interleaved runs), 1 job x 2 threads against
2 jobs x 1 thread: keypoints 2.64 against 1.48 CPU s per image (wall 8.95 against 7.84 s),
matching 3.92 against 0.75 CPU s per pair (wall 23.0 against 4.0 s); keypoints equal to
2.4e-4 px, descriptors to 3e-6, matches 100% identical (tests/test_accel.py checks this).

On a GPU there is one job and torch's threads are left alone: same code, device as a
parameter, nothing here changes the CUDA path.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

# Peak extra memory of one ALIKED-n16 forward pass per input pixel: 1.2 GB for a 1024x683
# image (1.7 kB/px, measured with getrusage), rounded up; keypoints.py budgets a square image.
ALIKED_BYTES_PER_PIXEL = 2048


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux `MemAvailable`), or None if unknown.

    Read from /proc/meminfo because psutil is not a dependency; `os.sysconf` is the fallback
    (free pages only, so more conservative).
    """
    meminfo = Path("/proc/meminfo")
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_jobs(jobs: int, device, *, bytes_per_job: int | None = None) -> int:
    """How many items run at once.

    `jobs` > 0 is taken as given. 0 (auto) means one per torch thread on the CPU (torch's
    default: one per core), fewer if `bytes_per_job` times that would not fit in the available
    memory (`bytes_per_job` is meant to be a generous estimate); always 1 on a GPU (`device` is
    a torch.device).
    """
    if jobs < 0:
        raise ValueError(f"jobs must be 0 (auto) or positive, got {jobs}")
    if device.type != "cpu":
        return 1
    if jobs > 0:
        return jobs
    import torch

    n = max(1, torch.get_num_threads())
    if bytes_per_job and n > 1:
        free = available_memory()
        if free is not None:
            fits = max(1, int(free // bytes_per_job))
            if fits < n:
                logger.info(
                    "Running %d of %d possible jobs at once: %.1f GB available, %.1f GB each",
                    fits,
                    n,
                    free / 1e9,
                    bytes_per_job / 1e9,
                )
                n = fits
    return n


def threads_per_job(jobs: int) -> int:
    """torch intra-op threads each job uses: 1 with several jobs, else torch's setting."""
    import torch

    return 1 if jobs > 1 else torch.get_num_threads()


@contextlib.contextmanager
def job_threads(jobs: int) -> Iterator[int]:
    """While several jobs run, torch uses one intra-op thread (in every thread, as torch's
    setting is process-wide); restored on exit. Yields the threads per job."""
    import torch

    if jobs <= 1:
        yield torch.get_num_threads()
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(before)


def performance_summary(
    keypoints_config,
    matching_config,
    device: str,
    timings: dict[str, float],
    *,
    images: int,
    pairs: int,
    executor=None,
) -> dict:
    """The `performance` block of run.json: seconds per image (keypoints stage) and per pair
    (matching stage), over all images/pairs of the scene (a resumed run skips done ones), and
    the jobs and torch threads the two stages ran with, and what LightGlue computed in."""
    import torch

    from .device import resolve_device
    from .keypoints import extraction_jobs
    from .matching import lightglue_precision, matching_jobs

    torch_device = resolve_device(device)
    out: dict = {
        "device": str(torch_device),
        "executor": getattr(executor, "kind", "local"),
        "torch_threads": torch.get_num_threads(),
    }
    if matching_config.matcher == "lightglue":
        out["lightglue_precision"] = lightglue_precision(matching_config, torch_device)
    if out["executor"] == "local":
        for stage, jobs in (
            ("keypoints", extraction_jobs(keypoints_config, torch_device)),
            ("matching", matching_jobs(matching_config, torch_device)),
        ):
            out[f"{stage}_jobs"] = jobs
            out[f"{stage}_threads_per_job"] = threads_per_job(jobs)
    else:
        out["workers"] = getattr(executor, "num_workers", None)
    for stage, count, unit in (("keypoints", images, "image"), ("matching", pairs, "pair")):
        seconds = timings.get(stage)
        out[f"{stage}_s_per_{unit}"] = round(seconds / count, 4) if seconds and count else None
    return out
