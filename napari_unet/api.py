"""The Python API: `load_model` and `segment`, the same calls the CLI and the widgets make."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .core.model import UNet
from .core.modelfile import ModelFileError, read_model
from .core.segment import SegmentResult, segment_iter


def bundled_model_path() -> Path:
    """Path of the model file shipped inside the package."""
    return Path(str(resources.files("napari_unet") / "resources" / "bundled.safetensors"))


def models_dir() -> Path:
    """Per-user folder of saved model versions: $NAPARI_UNET_MODELS, else the platform's data dir."""
    env = os.environ.get("NAPARI_UNET_MODELS")
    if env:
        return Path(env)
    try:
        from platformdirs import user_data_dir

        return Path(user_data_dir("napari-unet", appauthor=False)) / "models"
    except ImportError:
        return Path.home() / ".local" / "share" / "napari-unet" / "models"


def resolve_model_path(spec: str | os.PathLike = "bundled") -> Path:
    """'bundled', a model file path, or the name of a saved version -> the file to load."""
    spec_s = str(spec)
    if spec_s == "bundled":
        return bundled_model_path()
    path = Path(spec_s).expanduser()
    if path.exists() or path.suffix == ".safetensors" or os.sep in spec_s:
        return path
    candidate = models_dir() / f"{spec_s}.safetensors"
    if candidate.exists():
        return candidate
    raise ModelFileError(f"no model file or saved version named '{spec_s}' (looked in {models_dir()})")


def load_model(spec: str | os.PathLike = "bundled", *, device: str | torch.device | None = None) -> UNet:
    """Load a U-Net in eval mode.

    Args:
        spec: ``"bundled"``, a model file, or the name of a saved version.
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
    channel: int | None = None,
    axes: str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int = 4,
    link_iou: float | None = None,
    return_result: bool = False,
) -> np.ndarray | SegmentResult:
    """Segment nuclei in a 2D image or a stack into integer instance labels.

    Args:
        image: Array-like (numpy, zarr, dask) of 2 or more dimensions.
        model: A loaded model, a model spec for `load_model`, or None for the bundled model.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
        diameter: Typical object diameter in pixels; estimated from the image when None.
        channel: Channel to segment when the image has a channel axis; None averages channels.
        axes: Axis letters from TZCYX ending in YX, e.g. ``"ZYX"``, ``"CYX"``; guessed when None.
        tile: Input tile size in pixels (default 256 in same mode).
        overlap: Minimum overlap between tiles, px.
        batch_size: Tiles per forward pass.
        link_iou: For stacks, link objects across consecutive planes whose IoU exceeds this.
        return_result: Return the full `SegmentResult` (labels, device used, diameter) instead.

    Returns:
        int32 labels with the image's spatial shape (the channel axis removed); 0 is background,
        ids are unique across planes.
    """
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_model(model or "bundled")
    gen = segment_iter(
        image, model, device=device, diameter=diameter, channel=channel, axes=axes, tile=tile,
        overlap=overlap, batch_size=batch_size, link_iou=link_iou,
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result = stop.value
            break
    return result if return_result else result.labels
