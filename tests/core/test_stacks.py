"""On a CPU, stacks are segmented two planes at a time, a block's instance step overlaps the next block's network,
and the size estimate tries two candidates at a time, in threads: the same result as one at a time, a Stop that
stops them, an error that reaches the caller, and torch's thread count given back every time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import napari_unet.core.segment as S
from napari_unet.api import load_model
from napari_unet.core.errors import InputError
from napari_unet.core.jobs import drain
from napari_unet.core.synth import synth_nuclei


@pytest.fixture(scope="module")
def bundled():
    return load_model("bundled")


@pytest.fixture
def stack():
    return np.stack([synth_nuclei((160, 192), rng=20 + i)[0] for i in range(6)])


def _plane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("napari-unet-job")]


def test_two_planes_at_once_give_what_one_at_a_time_gives(bundled, stack, two_threads, monkeypatch):
    run = dict(device="cpu", diameter=20.0, probabilities=True, doubt=True)
    both = drain(S.segment_iter(stack, bundled, **run))
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(S, "AT_ONCE", 1)
    one = drain(S.segment_iter(stack, bundled, **run))
    assert one.labels.max() > 6 * 5  # real objects in every plane, ids unique across planes
    np.testing.assert_array_equal(both.labels, one.labels)
    np.testing.assert_array_equal(both.probabilities, one.probabilities)
    np.testing.assert_array_equal(both.doubt, one.doubt)
    assert both.plane_scores == one.plane_scores
    assert both.extra["nucleus_level"] == one.extra["nucleus_level"]


def test_overlapping_the_halves_of_blocks_gives_what_one_at_a_time_gives(bundled, two_threads, monkeypatch):
    img = np.concatenate([np.concatenate([synth_nuclei((200, 240), rng=30 + 2 * i + j)[0] for j in range(2)], 1)
                          for i in range(2)])  # fmt: skip
    run = dict(device="cpu", diameter=20.0, block=192, probabilities=True)
    both = drain(S.segment_iter(img, bundled, **run))
    monkeypatch.setattr(S, "AT_ONCE", 1)
    one = drain(S.segment_iter(img, bundled, **run))
    assert one.labels.max() > 20
    np.testing.assert_array_equal(both.labels, one.labels)
    np.testing.assert_array_equal(both.probabilities, one.probabilities)
    assert both.scores == one.scores


def test_stop_while_two_planes_run_stops_them(bundled, stack, two_threads, monkeypatch):
    real, started = S.predict_block, []

    def counted(planes, plane, *args, **kwargs):
        started.append(plane)
        if len(started) > 2:  # later planes are held 2 s, so that what starts does not race the reader
            time.sleep(2.0)
        return (yield from real(planes, plane, *args, **kwargs))

    monkeypatch.setattr(S, "predict_block", counted)
    gen = S.segment_iter(np.concatenate([stack] * 3), bundled, device="cpu", diameter=20.0)
    fractions = [next(gen).fraction for _ in range(2)]
    gen.close()
    assert fractions == sorted(fractions)
    assert len(started) <= 6  # of 18 planes: two running, at most four held; the queued ones never start
    assert torch.get_num_threads() == 2
    assert not _plane_threads()


def test_an_error_in_one_plane_reaches_the_caller(bundled, stack, two_threads, monkeypatch):
    real = S.predict_block

    def failing(planes, plane, *args, **kwargs):
        if plane == (3,):
            raise InputError("plane 3 is unreadable")
        return (yield from real(planes, plane, *args, **kwargs))

    monkeypatch.setattr(S, "predict_block", failing)
    with pytest.raises(InputError, match="plane 3 is unreadable"):
        drain(S.segment_iter(stack, bundled, device="cpu", diameter=20.0))
    assert torch.get_num_threads() == 2
    assert not _plane_threads()


def test_overlapping_runs_give_torch_its_threads_back_once_both_end(two_threads):
    from napari_unet.core.jobs import in_threads

    def job(n):
        yield from range(n)
        return n

    a = in_threads([job(50), job(50)], 2)
    next(a)
    b = in_threads([job(50), job(50)], 2)
    next(b)
    assert torch.get_num_threads() == 1
    a.close()  # the first run ends while the second still runs: the cut stays
    assert torch.get_num_threads() == 1
    assert drain(b) == [50, 50]
    assert torch.get_num_threads() == 2


def test_the_size_estimate_tries_two_candidates_at_once_with_the_same_result(bundled, stack, two_threads, monkeypatch):
    from napari_unet.core.predict import InferenceModel

    infer = InferenceModel.prepare(bundled, torch.device("cpu"))
    both = S.estimate_diameter(infer, stack[0].astype(np.float32) / stack[0].max(), S.model_info(bundled))
    monkeypatch.setattr(S, "AT_ONCE", 1)
    one = S.estimate_diameter(infer, stack[0].astype(np.float32) / stack[0].max(), S.model_info(bundled))
    assert both == one and 10 < one < 40
    assert torch.get_num_threads() == 2


def test_overlapped_raises_the_second_halfs_error_and_finishes_the_one_under_way(two_threads):
    import time

    from napari_unet.core.jobs import overlapped

    def first(item):
        yield item
        return item * 10

    finished = []

    def second(item, value):
        time.sleep(0.05)
        if value == 30:
            raise OSError("disk full")
        finished.append(value)

    with pytest.raises(OSError, match="disk full"):
        drain(overlapped([1, 2, 3, 4], first, second, threads=True))
    assert finished == [10, 20] and torch.get_num_threads() == 2
    finished.clear()
    gen = overlapped([1, 2, 4], first, second, threads=True)
    assert [next(gen), next(gen)] == [1, 2]  # item 1's second half is under way
    gen.close()
    assert finished == [10] and torch.get_num_threads() == 2
