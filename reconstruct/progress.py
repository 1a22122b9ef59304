"""Progress of the long loops: a tqdm bar for the terminal, step reports and cancel for callers.

Stage modules call :func:`progress` where they would call ``tqdm``: same arguments, same bar (so
the CLI's ``-q``, which turns tqdm off, still hides it). A caller that wants the steps (the web
app) wraps its calls in :func:`watch`; every bar made inside the block then reports a
:class:`Step` ``(stage, done, total, unit)`` to the callback after each finished item, and checks a
:class:`CancelToken` at each step: once the token is cancelled the next step raises
:class:`~reconstruct.errors.RunCancelledError`. Stages write each finished item atomically, so a
cancelled stage keeps what it finished and a re-run resumes from there.

The watchers live in a context variable, so two runs in two threads (two browser sessions) do
not see each other's steps, and nothing is reported outside a ``watch`` block. A bar captures the
watchers when it is made, so its updates may come from any thread (pycolmap's callbacks,
executor result loops).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from .errors import RunCancelledError


@dataclass(frozen=True)
class Step:
    """One report of a progress bar: `done` of `total` items of `stage` are finished."""

    stage: str
    """The bar's ``desc`` ("keypoints", "matching", "mapping", ...)."""
    done: int
    total: int | None
    """None when the loop's length is unknown."""
    unit: str
    """The bar's unit ("img", "pair", ...)."""


class CancelToken:
    """A flag one thread sets (:meth:`cancel`) and the running stage checks at each step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self, stage: str) -> None:
        """Raise :class:`RunCancelledError` (naming `stage`) once :meth:`cancel` was called."""
        if self._event.is_set():
            raise RunCancelledError(stage)


Callback = Callable[[Step], None]
_WATCHERS: contextvars.ContextVar[tuple[tuple[Callback | None, CancelToken | None], ...]] = (
    contextvars.ContextVar("reconstruct_progress_watchers", default=())
)


@contextlib.contextmanager
def watch(callback: Callback | None = None, *, token: CancelToken | None = None) -> Iterator[None]:
    """Within the block, bars report each step to `callback` and raise once `token` is cancelled.

    Blocks nest (inner and outer watchers all see the steps). A new thread starts with no
    watchers: enter ``watch`` in the thread that runs the stages.
    """
    reset = _WATCHERS.set(_WATCHERS.get() + ((callback, token),))
    try:
        yield
    finally:
        _WATCHERS.reset(reset)


class ProgressBar(tqdm):
    """A tqdm bar that also reports its steps to the watchers of :func:`watch`.

    Counts are kept here, not in tqdm's ``n``: a disabled tqdm (``-q``) counts nothing.
    Iterating updates once per item, after the loop body finished with it (a report means "this
    many are done"); the cancel check comes when the bar is made and after each update.
    """

    def __init__(self, iterable: Iterable | None = None, *args: Any, **kwargs: Any) -> None:
        self._watchers = _WATCHERS.get()
        super().__init__(iterable, *args, **kwargs)
        # tqdm sets desc and unit only when enabled; read them from the arguments.
        self._stage = str(kwargs.get("desc") or (args[0] if args else "") or "")
        self._unit = str(kwargs.get("unit", "it"))
        self._done = int(kwargs.get("initial", 0))
        try:
            self._report()
        except RunCancelledError:
            self.close()
            raise

    def _report(self) -> None:
        if not self._watchers:
            return
        step = Step(self._stage, self._done, self.total, self._unit)
        for callback, _ in self._watchers:
            if callback is not None:
                callback(step)
        self._check()

    def _check(self) -> None:
        for _, token in self._watchers:
            if token is not None:
                token.check(self._stage)

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        self._done += int(n or 0)
        self._report()
        return shown

    def __iter__(self) -> Iterator:
        # Not tqdm's __iter__: it skips update() for speed, and then nobody would hear of the
        # steps. One update per image or pair costs microseconds next to the item's work.
        # The cancel check is in update(), after each item's body: the item is often computed
        # while the loop pulls it (a generator), so checking between the pull and the body
        # would throw finished work away.
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()


def progress(iterable: Iterable | None = None, **kwargs: Any) -> ProgressBar:
    """``tqdm(iterable, **kwargs)`` that also reports to :func:`watch` (see the module doc)."""
    return ProgressBar(iterable, **kwargs)
