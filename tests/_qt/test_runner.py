"""The job runner: a progress update that ends the job must not crash it."""

from __future__ import annotations


def test_progress_update_that_ends_the_job_does_not_crash():
    """napari's progress bar processes Qt events on update; the job's end can run inside it."""
    from napari_unet._qt.runner import JobRunner

    runner = JobRunner()

    class Bar:
        n = 0

        def update(self, k):
            runner._finished()  # what processEvents may deliver in the middle of an update

        def close(self):
            pass

        def set_description(self, message):
            raise AssertionError("a closed bar must not be touched")

    runner.pbar = Bar()
    runner.set_fraction(0.5, "re-segmenting")
    assert runner.pbar is None
