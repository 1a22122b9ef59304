"""A background run of one stage (or all) for one browser session: its progress and its Cancel.

The page starts a :class:`Job` and keeps it in the session's state; the job runs the library
call in its own thread inside `progress.watch`, so the stage's progress bars report here and its
cancel token stops the stage at the next image or pair. The page only reads the snapshot.
No Streamlit here: Streamlit calls are not allowed from other threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from ..errors import ReconstructError, RunCancelledError
from ..progress import CancelToken, Step, watch

logger = logging.getLogger(__name__)

JobState = Literal["running", "done", "cancelled", "failed"]
LOG_LINES = 50  # log lines a job keeps


class Job:
    """`call()` in a daemon thread; its steps, its end state and message, and a cancel."""

    def __init__(self, scope: str, call: Callable[[], str]) -> None:
        self.scope = scope
        """"all" or the stage name."""
        self.state: JobState = "running"
        self.message = ""
        self.cancelled_in: str | None = None
        """The progress bar (its desc) that raised `RunCancelledError`, when cancelled."""
        self.started = time.time()
        self.finished: float | None = None
        self._call = call
        self._token = CancelToken()
        self._lock = threading.Lock()
        self._steps: dict[str, Step] = {}
        self._last: str | None = None
        self._log: list[str] = []
        self._thread = threading.Thread(target=self._run, name=f"reconstruct-{scope}", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def cancel_requested(self) -> bool:
        return self._token.cancelled

    def cancel(self) -> None:
        """Ask the run to stop at its next step (the image or pair in flight finishes first)."""
        self._token.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def steps(self) -> list[Step]:
        """The latest step of every progress bar so far, in the order the bars appeared."""
        with self._lock:
            return list(self._steps.values())

    @property
    def last_bar(self) -> str | None:
        with self._lock:
            return self._last

    def log_tail(self, n: int = 3) -> list[str]:
        """The last `n` log lines of the run (the ``reconstruct`` loggers, this job's thread)."""
        with self._lock:
            return self._log[-n:]

    def _on_log(self, line: str) -> None:
        with self._lock:
            self._log = [*self._log[-(LOG_LINES - 1) :], line]

    def _on_step(self, step: Step) -> None:
        with self._lock:
            self._steps[step.stage] = step
            self._last = step.stage

    def _run(self) -> None:
        package = logging.getLogger("reconstruct")
        handler = _ThreadLog(threading.get_ident(), self._on_log)
        package.addHandler(handler)
        try:
            with watch(self._on_step, token=self._token):
                message = self._call()
            self.message, self.state = message, "done"
        except RunCancelledError as e:
            self.message, self.cancelled_in, self.state = str(e), e.stage, "cancelled"
        except ReconstructError as e:
            self.message, self.state = str(e), "failed"
        except Exception as e:  # a bug, not a user error: logged, and a message in the page
            logger.exception("The %s run failed", self.scope)
            self.message, self.state = f"{type(e).__name__}: {e}", "failed"
        finally:
            package.removeHandler(handler)
            self.finished = time.time()


class _ThreadLog(logging.Handler):
    """Hands the log lines of one thread (one job) to `sink`; other sessions' lines are not
    its business. Shows what the stages without a progress bar are doing."""

    def __init__(self, thread: int, sink: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.thread = thread
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            try:
                self.sink(record.getMessage())
            except Exception:  # logging must never raise
                self.handleError(record)
