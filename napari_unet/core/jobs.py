"""Long work as plain generators with out-of-memory fallbacks; what `napari_unet.api` runs.

Each job yields `Progress` (from the engine) or `Notice` (something the user must be told, e.g. a
fallback after running out of GPU memory) and returns its result. Out of GPU memory, segmentation
retries with one tile per batch, then with smaller tiles, then on the CPU; training retries with
smaller batches, then on the CPU. The API, and through it the CLI and the widgets, use these jobs,
so every caller gets the same fallbacks and the same labels. `drain` runs any of them to the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .blockwise import DEFAULT_BLOCK

MIN_TILE = 64


def drain(gen: Generator, on_item: Callable[[object], None] | None = None):
    """Run a generator to the end and return its return value, passing each yielded item to `on_item`."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_item is not None:
            on_item(item)


def relay(gen: Generator, convert: Callable[[object], object]):
    """`yield from gen` with every item passed through `convert`; returns what `gen` returns."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield convert(item)


_SHARES = {"lock": threading.Lock(), "runs": 0, "threads": 1}


@contextmanager
def shared_torch_threads(workers: int):
    """torch's CPU threads (a per-process setting) cut into `workers` shares while any of `in_threads`,
    `overlapped` and `map_in_threads` runs; the count is restored when the last one ends, so runs that overlap
    cannot leave it cut."""
    import torch

    with _SHARES["lock"]:
        if _SHARES["runs"] == 0:
            _SHARES["threads"] = torch.get_num_threads()
            torch.set_num_threads(max(1, _SHARES["threads"] // workers))
        _SHARES["runs"] += 1
    try:
        yield
    finally:
        with _SHARES["lock"]:
            _SHARES["runs"] -= 1
            if _SHARES["runs"] == 0:
                torch.set_num_threads(_SHARES["threads"])


def overlapped(items: list, first: Callable, second: Callable, threads: bool) -> Generator:
    """For each item, `first(item)` (a generator: its items are yielded, its return value is kept) here, then
    `second(item, value)`; with `threads`, `second` runs in a thread while `first` works on the next item, each
    with half of torch's threads. Segmenting big planes, the network's half (`blockwise.predict_block`) and the
    single-threaded instance step (`finish_block`) overlap: 16384^2 out of core 118 -> 80 s. An error in
    `second` is raised here; closing this generator lets the `second` under way finish."""
    if not threads:
        for item in items:
            second(item, (yield from first(item)))
        return
    from concurrent.futures import ThreadPoolExecutor

    with shared_torch_threads(2):
        pool, pending = ThreadPoolExecutor(1, thread_name_prefix="napari-unet-job"), None
        try:
            for item in items:
                value = yield from first(item)
                if pending is not None:
                    pending.result()
                pending = pool.submit(second, item, value)
            if pending is not None:
                pending.result()
        finally:
            pool.shutdown(wait=True)


def map_in_threads(fn: Callable, items: list, workers: int) -> list:
    """``[fn(x) for x in items]``, `workers` at a time in threads sharing torch's CPU threads (`in_threads`'s
    plain-function sibling)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with shared_torch_threads(workers), ThreadPoolExecutor(workers, thread_name_prefix="napari-unet-job") as pool:
        return list(pool.map(fn, items))


def in_threads(jobs: list[Generator], workers: int) -> Generator[object, None, list]:
    """Run the generators `jobs` `workers` at a time, each in a thread with its share of torch's CPU threads
    (restored after). Yields the latest item of the first job not yet done, so progress only moves forward;
    returns the jobs' results in order. An error in a job is raised here. Closing this generator (Stop)
    cancels the jobs not started and stops the running ones at their next item.
    """
    import queue
    from concurrent.futures import ThreadPoolExecutor

    events: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    class Stopped(Exception):
        pass

    def run(k: int) -> None:
        def report(item):
            if stop.is_set():
                raise Stopped
            events.put((k, item, None))

        try:
            events.put((k, None, drain(jobs[k], report)))
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            events.put((k, exc, None))

    results: dict[int, object] = {}
    latest: dict[int, object] = {}
    with shared_torch_threads(workers):
        pool = ThreadPoolExecutor(workers, thread_name_prefix="napari-unet-job")
        try:
            for k in range(len(jobs)):
                pool.submit(run, k)
            while len(results) < len(jobs):
                k, item, result = events.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    results[k] = result
                else:
                    latest[k] = item
                first = next((i for i in range(len(jobs)) if i not in results), None)
                if first in latest:
                    yield latest[first]
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
    return [results[k] for k in range(len(jobs))]


@dataclass
class Notice:
    """A message for the user (a napari notification), yielded by a job between progress updates."""

    message: str
    level: str = "warning"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's OutOfMemoryError and the MPS / older-torch RuntimeError that says "out of memory"."""
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fallback_plan(
    device: str, tile: int, batch_size: int | None, fit=lambda t: t, first_tile: int | None = None
) -> Iterator[tuple[str, int | None, int | None, str]]:
    """Settings to try in order: (device, tile, batch, why), first the requested ones.

    `tile` is the largest tile of the first try, which uses `first_tile` (None: the engine sizes tiles
    to fit the image, as every caller does by default) and `batch_size` (None: the engine's choice).
    `fit` rounds a tile size to one the network accepts.
    """
    yield device, first_tile, batch_size, ""
    if device == "cpu":
        return
    if batch_size is None or batch_size > 1:
        yield device, first_tile, 1, f"out of GPU memory: retrying with 1 tile per batch (was {batch_size or 'auto'})"
    t = tile
    while t // 2 >= MIN_TILE:
        t2 = fit(t // 2)
        if t2 >= t:
            break
        yield device, t2, 1, f"out of GPU memory: retrying with {t2} px tiles (was {t})"
        t = t2
    yield "cpu", first_tile, batch_size, "out of GPU memory even with small tiles: running on the CPU instead (slower)"


def resolve_model(model):
    """A loaded model for a spec (None = ``"current"``, ``"bundled"``, a version name, a file) or the model itself.

    Raises:
        TypeError: `model` is neither a spec nor a napari-unet `UNet`.
    """
    import os

    from .model import UNet

    if model is None or isinstance(model, (str, os.PathLike)):
        from ..api import load_model

        return load_model(model or "current")
    if not isinstance(model, UNet):
        raise TypeError(
            "model must be a napari-unet UNet (from load_model), a model file or a saved version's name, "
            f"got {type(model).__module__}.{type(model).__name__}"
        )
    return model


def segment_job(
    image: np.ndarray,
    model,
    *,
    device: str = "auto",
    diameter: float | None = None,
    channel: int | None = None,
    axes: str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    probabilities: bool = False,
    estimate_plane: int | None = None,
    link_iou: float | None = None,
    tta: bool = False,
    doubt: bool = False,
    block: int | None = DEFAULT_BLOCK,
    merge_cuts: bool = True,
    min_score: float | None = None,
) -> Generator[object, None, object]:
    """Segment `image` (already a copy of what the user chose) with out-of-memory fallbacks.

    Args:
        image: The data to segment, with `axes`.
        model: A loaded U-Net or a model spec.
        device, diameter, channel, axes, tile, overlap, batch_size, probabilities, link_iou, tta, doubt, block,
            merge_cuts, min_score: As `core.segment.segment_iter`.
        estimate_plane: For a stack with no diameter given, estimate it on this plane (flat index)
            rather than on the first one (often empty at the top of a z-stack).

    Yields:
        `Progress` and `Notice`.

    Returns:
        `SegmentResult`; ``result.extra["notices"]`` lists the fallbacks taken and the warnings given (an image
        whose background is brighter than its objects).
    """
    from .device import select_device
    from .predict import default_tile
    from .segment import segment_iter

    net = resolve_model(model)
    dev = select_device(device)  # raises a plain ValueError for an unavailable device
    if diameter is None and estimate_plane is not None:
        diameter = yield from estimate_job(
            image, net, device=str(dev), channel=channel, axes=axes, plane=estimate_plane
        )
    tile0 = default_tile(net, tile)
    notices: list[str] = []

    def noted(item):  # the warnings the segmentation gives (`Notice`) go into the result too
        if isinstance(item, Notice):
            notices.append(item.message)
        return item

    for dev_name, t, b, why in fallback_plan(
        dev.type if dev.type != "cuda" else str(dev), tile0, batch_size, net.fit_input_size, first_tile=tile
    ):
        if why:
            notices.append(why)
            yield Notice(why)
        try:
            result = yield from relay(
                segment_iter(
                    image,
                    net,
                    device=dev_name,
                    diameter=diameter,
                    channel=channel,
                    axes=axes,
                    tile=t,
                    overlap=overlap,
                    batch_size=b,
                    probabilities=probabilities,
                    link_iou=link_iou,
                    tta=tta,
                    doubt=doubt,
                    block=block,
                    merge_cuts=merge_cuts,
                    min_score=min_score,
                ),
                noted,
            )
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _free_gpu_memory()
            continue
        result.extra["notices"] = notices
        return result
    raise MemoryError("out of memory even on the CPU")  # pragma: no cover - the CPU attempt raises first


def estimate_job(
    image: np.ndarray,
    model,
    *,
    device: str = "auto",
    channel: int | None = None,
    axes: str | None = None,
    plane: int = 0,
) -> Generator[object, None, float]:
    """Estimate the object diameter (px) on one plane of `image` (flat plane index `plane`)."""
    from .device import select_device
    from .normalize import iter_planes, resolve_axes, to_standard
    from .predict import InferenceModel
    from .segment import Progress, estimate_diameter, model_info

    net = resolve_model(model)
    yield Progress(0, 1, 0, 1, "estimating object size")
    std_image, std = to_standard(image, resolve_axes(tuple(image.shape), axes))
    n_plane_axes = len(std) - (3 if "C" in std else 2)
    plane_shape = tuple(std_image.shape[:n_plane_axes])
    sub, sub_axes = std_image, std
    if plane_shape:
        idx = np.unravel_index(int(np.clip(plane, 0, int(np.prod(plane_shape)) - 1)), plane_shape)
        sub, sub_axes = np.asarray(std_image[tuple(int(i) for i in idx)]), std[n_plane_axes:]
    _, _, planes = iter_planes(sub, sub_axes, channel)
    _, p = next(iter(planes))
    infer = InferenceModel.prepare(net, select_device(device))
    value = float(estimate_diameter(infer, p, model_info(net)))
    yield Progress(0, 1, 1, 1, "estimating object size")
    return value


def train_job(images, labels, masks, *, device: str = "auto", **kwargs) -> Generator[object, None, object]:
    """Run `core.train.train_iter`; out of GPU memory, retry with smaller batches, then on the CPU.

    Closing this generator (napari's Stop) closes the running `train_iter` at its current yield, so
    nothing is saved and the starting model is untouched.

    Yields:
        `TrainEvent` and `Notice`.

    Returns:
        `TrainResult`.
    """
    from .device import select_device
    from .train import TrainSettings, train_iter

    dev = select_device(device).type
    batch = int(kwargs.pop("batch", TrainSettings.batch))
    plan = [(device, batch, "")]
    if dev != "cpu":
        plan += [
            (device, b, f"out of GPU memory while training: retrying with {b} crop(s) per step (was {batch})")
            for b in sorted({batch // 2, 1} - {0, batch}, reverse=True)
            if b < batch
        ]
        plan.append(("cpu", batch, "out of GPU memory while training: starting again on the CPU (slower)"))
    for dev_name, b, why in plan:
        if why:
            yield Notice(why)
        try:
            return (yield from train_iter(images, labels, masks, device=dev_name, batch=b, **kwargs))
        except Exception as exc:
            if not is_out_of_memory(exc) or dev_name == "cpu":
                raise
            _free_gpu_memory()
    raise MemoryError("out of memory even on the CPU")  # pragma: no cover
