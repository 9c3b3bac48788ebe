"""Run one job generator at a time in a napari worker, with a progress bar in the activity dock.

Two details of the worker machinery are handled here so that widgets need not care:

* superqt's generator worker swallows a `RuntimeError` raised by the generator (it takes it for a
  deleted Qt object) and then never reports the end; torch raises RuntimeError for many failures, so
  jobs are relayed through `_relay`, which re-raises it as `JobFailed`.
* jobs run below the GUI thread's OS priority (`lower_thread_priority`), so a CPU-bound training run
  cannot starve the event loop;
* `worker.quit()` only stops iterating; `ClosingGeneratorWorker` also closes the job (in the worker
  thread, at the yield where it stopped), so its cleanup runs at once and nothing half-done survives.
  A job that had already passed its last yield when asked to stop (a training run saving its model)
  still returns; superqt then drops the result, so the worker keeps it as `result_after_quit`;
* jobs run in the plugin's own thread pool (`plugin_pool`), so a job starts at once without
  resizing Qt's process-wide pool, which napari and other plugins share.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
from collections.abc import Callable, Generator

from napari.qt.threading import GeneratorWorker, WorkerBase, create_worker
from napari.utils import progress
from qtpy.QtCore import QCoreApplication, QThreadPool

from ..core.jobs import Notice

PROGRESS_STEPS = 1000
POOL_NAME = "napari-unet jobs"
MAX_JOBS = 8  # more than the plugin ever runs at once (one job per widget, plus autosaves)


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
    """A generator worker that closes its job when asked to quit, and starts in the plugin's pool."""

    def __init__(self, func, *args, **kwargs) -> None:
        super().__init__(func, *args, **kwargs)
        self.job = args[0]
        self.result_after_quit = None

    def work(self):
        result = super().work()
        if self.abort_requested:
            if inspect.getgeneratorstate(self.job) == inspect.GEN_CLOSED and not isinstance(result, Exception):
                self.result_after_quit = result  # it had finished on its own: what it did is done
            self.job.close()
        return result

    def start(self) -> None:
        """Start in the plugin's thread pool (superqt's `start` always uses Qt's global one)."""
        start_worker(self)


def plugin_pool() -> QThreadPool:
    """The plugin's thread pool: a child of the Qt application, created on first use.

    Qt's global pool holds one thread per core and is shared with napari and other plugins: there,
    two long jobs fill it on a 2-core machine and a third queues. Growing it would change the whole
    process, so the plugin's jobs run here; threads are made on demand, up to `MAX_JOBS`.
    """
    app = QCoreApplication.instance()
    pool = app.findChild(QThreadPool, POOL_NAME)
    if pool is None:
        pool = QThreadPool(app)
        pool.setObjectName(POOL_NAME)
        pool.setMaxThreadCount(MAX_JOBS)
    return pool


def start_worker(worker: WorkerBase) -> None:
    """Start a napari (superqt) worker in `plugin_pool`: what `worker.start()` does in Qt's global pool."""
    # superqt's registry of running workers keeps the worker alive and lets napari stop it on close
    # (`await_workers`); it is private, so without it the worker is kept alive here instead.
    registry = getattr(WorkerBase, "_worker_set", None)
    if registry is None:
        registry = _RUNNING
    if worker in registry:
        raise RuntimeError("this worker is already started")
    registry.add(worker)
    worker.finished.connect(lambda w=worker: registry.discard(w))
    plugin_pool().start(worker)


_RUNNING: set = set()  # workers started by `start_worker` when superqt has no registry of its own


def unwrap(exc: BaseException) -> BaseException:
    """The original exception behind a `JobFailed`."""
    return exc.original if isinstance(exc, JobFailed) else exc


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
        self.result_after_cancel: object | None = None  # what a job returned although cancelled

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
        self.result_after_cancel = None
        self.pbar = progress(total=PROGRESS_STEPS, desc=desc)
        worker = create_worker(
            _relay, job, background, _worker_class=ClosingGeneratorWorker, _start_thread=False, _ignore_errors=True
        )
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the job to stop at its next yield; what it yields from now on is dropped.

        `running` stays true until the worker has really ended (`on_finish`). A job that had already
        passed its last yield still returns: its value is then `result_after_cancel`, not `on_return`'s.
        """
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
        if self.cancelled:  # late: the widget has already shown the stop
            return
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
        if self.cancelled and self.worker is not None:
            self.result_after_cancel = self.worker.result_after_quit
        self.worker = None
        if self.on_finish is not None:
            self.on_finish()
