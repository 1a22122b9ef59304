"""Where the per-item work of extraction and matching runs: in this process, or on Ray actors.

`make_executor("local")` runs items in-process, as the stages always did. `make_executor("ray")`
joins a Ray cluster (`address`) or starts a local instance, and runs batches on actors that each
load the model once. Results stream back to the driver, which stays the only writer of the HDF5
files (through `storage.ResultWriter`), so workers need no shared output file system. Only a
bounded number of batches is in flight, so the driver's memory does not grow with the job.

The stage modules define the workers (`keypoints.ExtractWorker`, `matching.MatchWorker`): plain
classes whose `__init__` loads the model and whose `process(batch)` returns one result per item,
computed by the same per-item function the local executor uses.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ExecutorError, MissingExtraError

logger = logging.getLogger(__name__)

ExecutorKind = Literal["local", "ray"]


@dataclass
class WorkerStats:
    """Items and busy time of one worker, for the summary at the end of a job."""

    items: int = 0
    batches: int = 0
    seconds: float = 0.0


class LocalExecutor:
    """Runs every item in this process (the stages' own loop; nothing to set up)."""

    kind: ExecutorKind = "local"

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class RayExecutor:
    """Runs batches on Ray actors; create it with `make_executor("ray", ...)`."""

    ray: Any
    num_workers: int
    max_in_flight: int
    threads_per_worker: int = 1
    """CPUs each actor reserves and torch threads it uses (CPU results depend on it)."""
    gpus_per_worker: float = 0.0
    """GPUs each actor reserves; Ray then shows the actor only those (CUDA_VISIBLE_DEVICES)."""
    extract_batch: int = 4
    match_batch: int = 32
    max_task_retries: int = 3
    kind: ExecutorKind = "ray"
    owns_instance: bool = False
    actors: list = field(default_factory=list)
    on_result: Callable[[RayExecutor, int], None] | None = None
    """Test hook: called on the driver after each finished batch with its index."""

    def map(
        self,
        worker_cls: type,
        init_args: tuple,
        batches: Iterable[tuple[int, Any]],
        *,
        progress=None,
        threads: int | None = None,
    ) -> Iterator[list]:
        """Run `worker_cls(*init_args).process(batch)` on actors; yield each batch's results.

        `batches` yields (number of items, payload) lazily, so payloads (descriptors) are built
        only when a slot frees up. Results come in completion order; `progress` (a tqdm bar) is
        advanced by the number of items of each finished batch. A batch whose actor dies is
        retried by Ray (`max_restarts`, `max_task_retries`) on the restarted actor. `threads`
        sets the actors' torch threads for this job (default `threads_per_worker`): a stage
        whose local loop runs each item with another count passes that count, to get the same
        bits on CPU.
        """
        ray = self.ray
        if not self.actors:  # started once per executor; each loads a stage's model on demand
            options = actor_options(
                self.threads_per_worker, self.gpus_per_worker, self.max_task_retries
            )
            remote_cls = ray.remote(**options)(_RayWorker)
            self.actors = [
                remote_cls.remote(self.threads_per_worker) for _ in range(self.num_workers)
            ]
        stats = [WorkerStats() for _ in self.actors]
        in_flight: dict[Any, tuple[int, int, int]] = {}  # ref -> (actor, batch index, n items)
        load = [0] * len(self.actors)  # batches in flight per actor
        iterator = iter(enumerate(batches))
        exhausted = False
        start = time.perf_counter()
        try:
            while True:
                while not exhausted and len(in_flight) < self.max_in_flight:
                    try:
                        index, (count, payload) = next(iterator)
                    except StopIteration:
                        exhausted = True
                        break
                    # The least loaded actor: a slow one does not collect a queue.
                    actor = min(range(len(self.actors)), key=load.__getitem__)
                    load[actor] += 1
                    ref = self.actors[actor].process.remote(
                        worker_cls, init_args, payload, threads or self.threads_per_worker
                    )
                    in_flight[ref] = (actor, index, count)
                if not in_flight:
                    break
                done, _ = ray.wait(list(in_flight), num_returns=1)
                ref = done[0]
                actor, index, count = in_flight.pop(ref)
                load[actor] -= 1
                try:
                    results, seconds = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise ExecutorError(
                        f"a Ray worker failed on batch {index} after {self.max_task_retries} "
                        f"retries: {e}"
                    ) from e
                stats[actor].items += count
                stats[actor].batches += 1
                stats[actor].seconds += seconds
                if progress is not None:
                    progress.update(count)
                yield results
                if self.on_result is not None:
                    self.on_result(self, index)
        finally:
            for ref in in_flight:  # an interrupted job: drop what is queued
                ray.cancel(ref)
            _log_summary(worker_cls.__name__, stats, time.perf_counter() - start)

    def worker_pids(self) -> list[int]:
        """Process ids of the live actors (used by the fault test to kill one)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        """Stop the actors, and the local Ray instance if this executor started it."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.owns_instance and self.ray.is_initialized():
            self.ray.shutdown()


class _RayWorker:
    """The actor body: holds one stage worker (its model loaded once) and times its batches.

    The worker is named in every call, not in the constructor, so one actor process serves
    extraction and then matching, and an actor Ray restarted after a crash rebuilds the worker
    of the batch it is retrying.
    """

    def __init__(self, threads: int) -> None:
        import torch

        # Ray sets OMP_NUM_THREADS=1 in workers; CPU kernels (oneDNN convolutions, matmuls)
        # give bit-different sums for different thread counts, so use the count the local
        # loop gives each item (each call may set another, see `RayExecutor.map`).
        torch.set_num_threads(threads)
        self.key: tuple | None = None
        self.worker = None

    def process(
        self, worker_cls: type, init_args: tuple, payload: Any, threads: int
    ) -> tuple[list, float]:
        import torch

        start = time.perf_counter()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if self.key != (worker_cls, init_args):
            self.worker = None  # free the previous stage's model first
            self.worker = worker_cls(*init_args)
            self.key = (worker_cls, init_args)
        results = self.worker.process(payload)
        return results, time.perf_counter() - start

    def pid(self) -> int:
        return os.getpid()


def local_threads_per_item() -> int:
    """torch threads the local executor gives each item on the CPU with the stages' default
    `jobs` (0, auto, see accel.py): one, whether several items run at once (one thread each)
    or torch has a single thread anyway. A local run with another `keypoints.jobs` or
    `matching.jobs`, or one that memory limits to a single job on a multi-core machine, uses
    more threads per item and differs from Ray in the last bits."""
    return 1


def actor_options(threads: int, gpus: float, retries: int) -> dict[str, Any]:
    """The resources and fault settings of every actor, as given to `ray.remote`."""
    return {
        "num_cpus": threads,
        "num_gpus": gpus,
        "max_restarts": retries,
        "max_task_retries": retries,
    }


def plan_workers(
    resources: dict[str, float],
    *,
    num_cpus: int | None,
    threads_per_worker: int,
    device: str = "auto",
    gpus_per_worker: float = 1.0,
) -> tuple[int, int, float]:
    """(actors, threads per actor, GPUs per actor) for a cluster with `resources`
    (`ray.cluster_resources()`).

    `device` cuda, or auto on a cluster that has GPUs, gives every actor `gpus_per_worker` GPUs
    (Ray then sets the actor's CUDA_VISIBLE_DEVICES to them, so `--device auto` in the actor
    finds exactly those), and as many actors as the GPUs and CPUs allow. cpu, or auto on a
    cluster without GPUs, gives CPU-only actors. cuda on a cluster without GPUs is an error.
    """
    cpus = int(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    usable = min(cpus, num_cpus) if num_cpus else cpus
    threads = max(1, min(threads_per_worker, usable))
    by_cpu = max(1, usable // threads)
    if device == "cuda" or (device == "auto" and gpus > 0):
        if gpus <= 0:
            raise ExecutorError(
                "--device cuda, but the Ray cluster has no GPUs (its resources: "
                f"{cpus} CPUs). Use --device cpu or auto, or join a cluster with GPU nodes."
            )
        if gpus_per_worker <= 0:
            raise ExecutorError(f"gpus_per_worker must be positive, got {gpus_per_worker}")
        by_gpu = int(gpus / gpus_per_worker + 1e-9)
        if by_gpu < 1:
            raise ExecutorError(
                f"each Ray worker asks for {gpus_per_worker} GPUs, the cluster has {gpus:g}"
            )
        return min(by_gpu, by_cpu), threads, gpus_per_worker
    return by_cpu, threads, 0.0


def _log_summary(what: str, stats: list[WorkerStats], wall: float) -> None:
    total = sum(s.items for s in stats)
    logger.info("%s: %d items on %d Ray workers in %.1f s", what, total, len(stats), wall)
    for i, s in enumerate(stats):
        rate = s.items / s.seconds if s.seconds > 0 else 0.0
        logger.info(
            "  worker %d: %d items in %d batches, %.1f s busy, %.2f items/s",
            i,
            s.items,
            s.batches,
            s.seconds,
            rate,
        )


def make_executor(
    kind: ExecutorKind = "local",
    address: str | None = None,
    num_cpus: int | None = None,
    *,
    extract_batch: int = 4,
    match_batch: int = 32,
    threads_per_worker: int | None = None,
    device: str = "auto",
    gpus_per_worker: float = 1.0,
) -> LocalExecutor | RayExecutor:
    """An executor of kind `local` (in-process) or `ray`.

    For `ray`, `address` joins an existing cluster (`auto` or `HOST:PORT`); without it a local
    instance is started with `num_cpus` cores (default: all of this machine's). Each actor
    reserves `threads_per_worker` CPUs and runs torch with that many threads; the default is
    the torch threads the local executor gives each image or pair (`local_threads_per_item`),
    which makes CPU results bit-identical to its (CPU kernels sum differently with other thread
    counts). As many actors run as
    the cluster's CPUs (capped by `num_cpus`) allow, at least one. With `device` cuda, or auto
    on a cluster with GPUs, each actor also reserves `gpus_per_worker` GPUs (see
    `plan_workers`).
    """
    if kind == "local":
        return LocalExecutor()
    if kind != "ray":
        raise ExecutorError(f"unknown executor {kind!r}; choose local or ray")
    ray = _import_ray()
    owns = _start_ray(ray, address, num_cpus)
    resources = ray.cluster_resources()
    if threads_per_worker is None:
        threads_per_worker = local_threads_per_item()
    try:
        workers, threads_per_worker, gpus = plan_workers(
            resources,
            num_cpus=num_cpus,
            threads_per_worker=threads_per_worker,
            device=device,
            gpus_per_worker=gpus_per_worker,
        )
    except ExecutorError:
        if owns:
            ray.shutdown()
        raise
    logger.info(
        "Ray executor: %d workers with %d threads and %g GPUs each (%d CPUs, %g GPUs in the "
        "cluster)",
        workers,
        threads_per_worker,
        gpus,
        int(resources.get("CPU", 1)),
        float(resources.get("GPU", 0)),
    )
    return RayExecutor(
        ray=ray,
        num_workers=workers,
        max_in_flight=2 * workers,
        threads_per_worker=threads_per_worker,
        gpus_per_worker=gpus,
        extract_batch=extract_batch,
        match_batch=match_batch,
        owns_instance=owns,
    )


def _import_ray():
    """The `ray` module, or a MissingExtraError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise MissingExtraError(
            "--executor ray needs Ray, which is not installed; install the extra with "
            'pip install -e ".[distributed]" (or pip install "ray>=2.9")'
        ) from None
    return ray


def _start_ray(ray, address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address`, or start a local instance with `num_cpus` cores, unless
    Ray is already initialised; True if this call started the instance (the executor owns it)."""
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            return True
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as e:  # Ray raises many kinds; report them all alike
        where = f"the cluster at {address}" if address else "a local Ray instance"
        raise ExecutorError(f"cannot start or join {where}: {e}") from e
    return False


def batched(items: list, size: int) -> Iterator[list]:
    """Consecutive chunks of at most `size` items."""
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + size]
