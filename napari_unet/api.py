"""The Python API: `load_model`, `segment`, `train`, the same calls the CLI and the widgets make."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .core import versions
from .core.model import UNet
from .core.modelfile import read_model
from .core.segment import SegmentResult, segment_iter

if TYPE_CHECKING:
    from .core.train import TrainEvent, TrainResult


def bundled_model_path() -> Path:
    """Path of the model file shipped inside the package."""
    return versions.bundled_model_path()


def models_dir() -> Path:
    """Per-user folder of saved model versions: $NAPARI_UNET_MODELS, else the platform's data dir."""
    return versions.models_dir()


def resolve_model_path(spec: str | os.PathLike = "bundled") -> Path:
    """'bundled', 'current', a model file path, or the name of a saved version -> the file to load."""
    return versions.resolve_model_path(spec)


def load_model(spec: str | os.PathLike = "bundled", *, device: str | torch.device | None = None) -> UNet:
    """Load a U-Net in eval mode.

    Args:
        spec: ``"bundled"``, ``"current"`` (the version `revert` / training last selected, else
            bundled), a model file, or the name of a saved version.
        device: Where to put it; None leaves it on the CPU (`segment` moves a copy as needed).

    Returns:
        The model; its `info` attribute holds the file's `ModelInfo` (training diameter, provenance).

    Raises:
        ModelFileError: missing, unreadable or foreign file.
    """
    model, info = read_model(resolve_model_path(spec))
    model.info = info
    if device is not None:
        from .core.device import select_device

        model = model.to(select_device(device))
    return model


def segment(
    image,
    model: UNet | str | None = None,
    *,
    device: str | torch.device = "auto",
    diameter: float | None = None,
    channel: int | str | None = None,
    axes: str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    link_iou: float | None = None,
    tta: bool = False,
    return_result: bool = False,
) -> np.ndarray | SegmentResult:
    """Segment nuclei in a 2D image or a stack into integer instance labels.

    Args:
        image: Array-like (numpy, zarr, dask) of 2 or more dimensions.
        model: A loaded model, a model spec for `load_model`, or None for the bundled model.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
        diameter: Typical object diameter in pixels; estimated from the image when None.
        channel: Channel to segment when the image has a channel axis; None picks the one that
            looks most like a nuclear stain, ``"mean"`` averages them.
        axes: Axis letters from TZCYX ending in YX, e.g. ``"ZYX"``, ``"CYX"``; guessed when None.
        tile: Largest input tile in pixels (default 512 in same mode; tiles are sized to fit the image).
        overlap: Minimum overlap between tiles, px.
        batch_size: Tiles per forward pass; None picks about 256 k pixels a batch.
        link_iou: For stacks, link objects across consecutive planes whose IoU exceeds this.
        tta: Test-time augmentation: average the network's output over the four flips of every
            tile (four forward passes, about 2x the time end to end; see benchmarks/RESULTS.md for what it buys).
        return_result: Return the full `SegmentResult` (labels, device used, diameter) instead.

    Returns:
        int32 labels with the image's spatial shape (the channel axis removed); 0 is background,
        ids are unique across planes.
    """
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_model(model or "bundled")
    gen = segment_iter(
        image, model, device=device, diameter=diameter, channel=channel, axes=axes, tile=tile,
        overlap=overlap, batch_size=batch_size, link_iou=link_iou, tta=tta,
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result = stop.value
            break
    return result if return_result else result.labels


# -- retraining -------------------------------------------------------------------------------
def train(
    images,
    labels,
    masks=None,
    *,
    init: str | os.PathLike | UNet = "bundled",
    seconds: float | None = None,
    steps: int | None = None,
    device: str | torch.device = "auto",
    **kw,
) -> Generator[TrainEvent, None, TrainResult]:
    """Fine-tune a model on corrected images: a generator of `TrainEvent`, returning a `TrainResult`.

    The same call as `napari_unet.core.train.train_iter` (see there for every argument: scribbles,
    preview, diameter, seed, name, settings). Stop by closing the generator at any yield: nothing is
    saved and the starting model is untouched. On completion the new model is saved as a version in
    `models_dir()` with its lineage.

    Example::

        gen = napari_unet.train(image, corrected_labels, touched_mask, seconds=60)
        for event in gen: ...            # or: result = napari_unet.train_model(...)
    """
    from .core.train import train_iter

    return train_iter(images, labels, masks, init=init, seconds=seconds, steps=steps, device=device, **kw)


def train_model(
    images,
    labels,
    masks=None,
    *,
    init: str | os.PathLike | UNet = "bundled",
    seconds: float | None = None,
    steps: int | None = None,
    device: str | torch.device = "auto",
    **kw,
) -> TrainResult:
    """Run `train` to the end and return its `TrainResult` (model, saved path, name, metrics)."""
    gen = train(images, labels, masks, init=init, seconds=seconds, steps=steps, device=device, **kw)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def list_versions() -> list[versions.Version]:
    """Saved model versions in `models_dir()`, oldest first (`.current` marks the current one)."""
    return versions.list_versions()


def current_version() -> str:
    """Name of the model that ``load_model("current")`` loads (``"bundled"`` if none was chosen)."""
    return versions.current_name() or "bundled"


def revert(name: str) -> Path:
    """Make a saved version (or ``"bundled"``) the current model; versions are never deleted.

    Returns:
        The file that ``load_model("current")`` now loads.
    """
    versions.set_current(name)
    return versions.resolve_model_path("current")
