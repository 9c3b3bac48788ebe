"""Image or stack -> instance labels: the one pipeline behind the API, the CLI and the widget.

`segment_iter` is a generator: it yields `Progress` after every batch of tiles and returns a
`SegmentResult`, so a napari worker can show progress and stop between batches, while `segment`
simply runs it to the end.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.filters import gaussian, threshold_otsu

from .device import describe, select_device
from .instances import labels_from_probabilities, link_planes, min_object_size
from .model import UNet
from .modelfile import ModelInfo
from .normalize import InputError, iter_planes
from .predict import InferenceModel, predict_plane


@dataclass
class Progress:
    """Where a segmentation run is: plane `plane` of `planes`, tile `done` of `total` in it."""

    plane: int
    planes: int
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return (self.plane + (self.done / self.total if self.total else 1.0)) / max(self.planes, 1)


@dataclass
class SegmentResult:
    labels: np.ndarray
    device: str
    diameter: float
    probabilities: np.ndarray | None = None  # uint8 foreground probability, 255 = 1.0
    axes: str = "YX"
    extra: dict = field(default_factory=dict)


def model_info(model: UNet) -> ModelInfo:
    info = getattr(model, "info", None)
    return info if isinstance(info, ModelInfo) else ModelInfo(config=model.config)


def classical_diameter(plane: np.ndarray) -> float | None:
    """Rough object diameter from an Otsu mask: median over components of 2 x max inscribed radius.

    The largest inscribed circle of a clump of touching nuclei is about one nucleus wide, so this is
    insensitive to clumping; it only seeds the model-based estimate.
    """
    sm = gaussian(plane, 1.0)
    if not np.isfinite(sm).all() or np.ptp(sm) < 1e-6:
        return None
    mask = sm > threshold_otsu(sm)
    lab, n = ndi.label(mask)
    if n == 0:
        return None
    dist = ndi.distance_transform_edt(mask)
    radii = ndi.maximum(dist, lab, np.arange(1, n + 1))
    areas = ndi.sum(mask, lab, np.arange(1, n + 1))
    radii = np.asarray(radii)[np.asarray(areas) >= 12]
    return float(2 * np.median(radii)) if radii.size else None


def median_diameter(labels: np.ndarray) -> float | None:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(2 * np.sqrt(np.median(areas) / np.pi)) if areas.size else None


def estimate_diameter(infer: InferenceModel, plane: np.ndarray, model_diameter: float, crop: int = 768) -> float:
    """Median object diameter in `plane`, px: a classical guess refined by one model pass on a crop.

    Falls back to `model_diameter` (no rescaling) when nothing is found.
    """
    H, W = plane.shape
    y0, x0 = max(0, (H - crop) // 2), max(0, (W - crop) // 2)
    sub = plane[y0 : y0 + crop, x0 : x0 + crop]
    guess = classical_diameter(sub) or model_diameter
    guess = float(np.clip(guess, 4, 400))
    for _ in range(2):
        scale = model_diameter / guess
        gen = predict_plane(infer, sub, scale=scale)
        probs = _drain(gen)
        labels = labels_from_probabilities(probs, min_size=min_object_size(guess))
        found = median_diameter(labels)
        if found is None:
            break
        converged = abs(np.log(found / guess)) < np.log(1.15)
        guess = float(np.clip(found, 4, 400))
        if converged:
            break
    return guess


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def segment_iter(
    image,
    model: UNet,
    *,
    device: str | torch.device = "auto",
    diameter: float | None = None,
    channel: int | None = None,
    axes: str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    link_iou: float | None = None,
    probabilities: bool = False,
    precision: str = "auto",
) -> Generator[Progress, None, SegmentResult]:
    """Segment a 2D image or a stack, plane by plane. See `napari_unet.segment` for the arguments.

    Yields:
        `Progress` after every batch of tiles.

    Returns:
        `SegmentResult` with int32 labels of the image's spatial shape (channel axis removed);
        ids are unique across planes, and shared by linked objects when `link_iou` is set.
    """
    if diameter is not None and not (np.isfinite(diameter) and diameter > 0):
        raise InputError(f"diameter must be a positive number of pixels, got {diameter}")
    dev = select_device(device)
    info = model_info(model)
    spatial, out_axes, planes = iter_planes(image, axes, channel)
    n_planes = int(np.prod(spatial[:-2])) if len(spatial) > 2 else 1
    infer = InferenceModel.prepare(model, dev, precision)
    # A single plane is returned as computed; stacks are assembled in one preallocated array.
    labels = np.zeros(spatial, np.int32) if n_planes > 1 else None
    probs_out = np.zeros(spatial, np.uint8) if probabilities else None
    offset = 0
    used_diameter = diameter
    if used_diameter is None:  # once per stack, on the plane where objects are sharpest
        yield Progress(0, n_planes, 0, 1, "estimating object size")
        best = planes.most_contrasted() if n_planes > 1 else planes.indices[0]
        used_diameter = estimate_diameter(infer, planes.at(best), info.diameter)
    for k, (idx, plane) in enumerate(planes):
        scale = info.diameter / used_diameter
        gen = predict_plane(infer, plane, scale=scale, tile=tile, overlap=overlap, batch_size=batch_size)
        while True:
            try:
                done, total = next(gen)
            except StopIteration as stop:
                probs = stop.value
                break
            yield Progress(k, n_planes, done, total)
        del plane  # the normalised plane is not needed past prediction
        if probs_out is not None:
            probs_out[idx] = 255 - probs[0]
        lab = labels_from_probabilities(probs, min_size=min_object_size(used_diameter))
        del probs
        if labels is None:
            labels = lab
            continue
        if lab.max():
            lab[lab > 0] += offset
            offset = int(lab.max())
        labels[idx] = lab
    if link_iou is not None and labels.ndim > 2:
        flat = labels.reshape(-1, *labels.shape[-2:])
        labels = link_planes(flat, link_iou).reshape(labels.shape)
    return SegmentResult(labels, describe(dev), float(used_diameter or info.diameter), probs_out, out_axes)
