"""Run one job generator at a time in a napari worker, with a progress bar in the activity dock.

Two details of the worker machinery are handled here so that widgets need not care:

* superqt's generator worker swallows a `RuntimeError` raised by the generator (it takes it for a
  deleted Qt object) and then never reports the end; torch raises RuntimeError for many failures, so
  jobs are relayed through `_relay`, which re-raises it as `JobFailed`.
* jobs run below the GUI thread's OS priority (`lower_thread_priority`), so a CPU-bound training run
  cannot starve the event loop;
* `worker.quit()` only stops iterating; `ClosingGeneratorWorker` also closes the job (in the worker
  thread, at the yield where it stopped), so its cleanup runs at once and nothing half-done survives.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Generator

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress

from .jobs import Notice

PROGRESS_STEPS = 1000


class JobFailed(Exception):
    """Carries an exception the worker machinery would otherwise swallow."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def lower_thread_priority(nice: int = 10) -> None:
    """Run the calling (worker) thread, and the compute threads it starts, below the GUI's priority.

    On Linux a thread is a task with its own nice value, inherited by the threads it creates (torch's
    intra-op pool included); elsewhere Qt's thread priority is used. The GUI thread keeps its share
    of the CPU when training saturates every core, which is what keeps the viewer responsive.
    """
    try:
        if sys.platform.startswith("linux"):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), nice))
        else:
            from qtpy.QtCore import QThread

            QThread.currentThread().setPriority(QThread.LowPriority)
    except (OSError, AttributeError):  # not permitted, or no such API: run at normal priority
        pass


def _relay(job: Generator, background: bool = True) -> Generator:
    if background:
        lower_thread_priority()
    try:
        return (yield from job)
    except RuntimeError as exc:
        raise JobFailed(exc) from exc


class ClosingGeneratorWorker(GeneratorWorker):
    """A generator worker that closes its job when asked to quit."""

    def __init__(self, func, *args, **kwargs) -> None:
        super().__init__(func, *args, **kwargs)
        self.job = args[0]

    def work(self):
        result = super().work()
        if self.abort_requested:
            self.job.close()
        return result


def unwrap(exc: BaseException) -> BaseException:
    """The original exception behind a `JobFailed`."""
    return exc.original if isinstance(exc, JobFailed) else exc


def make_room() -> None:
    """Grow Qt's global thread pool when it is full, so that a job starts now instead of queueing
    behind a long one (the pool holds one thread per core: two jobs fill it on a 2-core machine)."""
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    if pool.activeThreadCount() >= pool.maxThreadCount():
        pool.setMaxThreadCount(pool.activeThreadCount() + 1)


class JobRunner:
    """Starts jobs and routes their yields, result and errors to callbacks on the main thread.

    Args:
        on_yield: Called with every yielded value except `Notice` (progress, training events).
        on_return: Called with the job's return value (not after a cancel).
        on_error: Called with the original exception.
        on_finish: Called when the job has ended in any way (after the above).
        on_notice: Called with each `Notice` (default: a napari warning).
    """

    def __init__(
        self,
        on_yield: Callable[[object], None] | None = None,
        on_return: Callable[[object], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_finish: Callable[[], None] | None = None,
        on_notice: Callable[[Notice], None] | None = None,
    ) -> None:
        self.on_yield, self.on_return, self.on_error = on_yield, on_return, on_error
        self.on_finish, self.on_notice = on_finish, on_notice
        self.worker: ClosingGeneratorWorker | None = None
        self.pbar: progress | None = None
        self.cancelled = False

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, job: Generator, desc: str, background: bool = True) -> ClosingGeneratorWorker:
        """Run `job` in a worker thread; `desc` labels its progress bar.

        `background` runs it at a lower OS priority than the GUI (see `lower_thread_priority`).
        """
        if self.worker is not None:
            raise RuntimeError("a job is already running")
        self.cancelled = False
        self.pbar = progress(total=PROGRESS_STEPS, desc=desc)
        worker = create_worker(
            _relay, job, background, _worker_class=ClosingGeneratorWorker, _start_thread=False, _ignore_errors=True
        )
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.worker = worker
        make_room()
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the job to stop at its next yield."""
        if self.worker is not None:
            self.cancelled = True
            self.worker.quit()

    def set_fraction(self, fraction: float, message: str = "") -> None:
        """Move the activity-dock progress bar (0..1)."""
        pbar = self.pbar
        if pbar is None:
            return
        target = int(max(0.0, min(1.0, fraction)) * PROGRESS_STEPS)
        if target > pbar.n:
            pbar.update(target - pbar.n)
        # Updating the bar can process Qt events, and with them the job's end, which closes the bar.
        if message and self.pbar is pbar:
            pbar.set_description(message)

    def _yielded(self, value) -> None:
        if isinstance(value, Notice):
            if self.on_notice is not None:
                self.on_notice(value)
            else:
                from . import notify

                notify.warning(value.message)
            return
        if self.on_yield is not None:
            self.on_yield(value)

    def _returned(self, value) -> None:
        if self.on_return is not None and not self.cancelled:
            self.on_return(value)

    def _errored(self, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(unwrap(exc))

    def _finished(self) -> None:
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        self.worker = None
        if self.on_finish is not None:
            self.on_finish()
