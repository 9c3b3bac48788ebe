"""What the Retrain widget sends to the engine: chosen planes of image, labels and trusted mask (copies)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import InputError
from ..core.normalize import colour_channel, colour_plane, percentile_range, without_overlays
from ..core.trainingdata import side_view_planes, training_planes
from .corrections import CorrectionsTracker
from .layers import layer_anisotropy, layer_axes, visible_yx
from .session import spatial_shape

PLANE_CHOICES = ("planes with corrections", "displayed plane", "all planes")
TRUST_CHOICES = ("painted + reviewed pixels", "whole edited objects too", "every pixel of the planes")


@dataclass
class TrainingRequest:
    """Copies of the training data and what the preview shows."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    masks: list[np.ndarray] | None
    planes: list[tuple[int, ...]]
    preview: np.ndarray | None = None
    preview_yx: tuple[slice, slice] | None = None
    preview_range: tuple[float, float] | None = None
    diameter: float | None = None
    extra: dict = field(default_factory=dict)


def _plane_image(image_layer, plane: tuple[int, ...], channel: int | str) -> np.ndarray:
    data = np.asarray(image_layer.data[plane] if plane else image_layer.data)
    if image_layer.rgb:  # `channel`: as `training_planes` takes it
        data = colour_plane(data, channel)
    return np.array(data, dtype=np.float32 if data.dtype.kind == "f" else data.dtype, copy=True)


def build_request(
    image_layer,
    tracker: CorrectionsTracker,
    *,
    planes: str = PLANE_CHOICES[0],
    plane_list: str = "",
    trust: str = TRUST_CHOICES[0],
    displayed: tuple[int, ...] = (),
    preview: bool = True,
) -> TrainingRequest:
    """Gather the planes to train on, checking everything the user could have got wrong.

    Args:
        image_layer: The raw image.
        tracker: The corrections of the labels layer.
        planes: One of `PLANE_CHOICES`; `plane_list` (e.g. ``"0-3, 7"``) overrides it when not empty.
        trust: One of `TRUST_CHOICES`.
        displayed: Index of the displayed plane (stacks).
        preview: Include the visible region of the displayed plane as the live preview.
    """
    labels_layer = tracker.layer
    shape = tuple(labels_layer.data.shape)
    if spatial_shape(image_layer) != shape:
        raise InputError(
            f"the labels layer '{labels_layer.name}' is {'x'.join(map(str, shape))} but the image "
            f"'{image_layer.name}' is {'x'.join(map(str, spatial_shape(image_layer)))}: choose matching layers"
        )
    mode = {TRUST_CHOICES[0]: "painted", TRUST_CHOICES[1]: "objects", TRUST_CHOICES[2]: "all"}[trust]
    if mode != "all" and tracker.n_trusted == 0:
        raise InputError(
            "nothing painted yet: correct some objects with the brush or mark a plane reviewed "
            "(Corrections widget), or choose to trust every pixel of the planes"
        )
    plane_shape = shape[:-2]
    flat = (lambda idx: int(np.ravel_multi_index(idx, plane_shape))) if plane_shape else (lambda idx: 0)
    if plane_list.strip() and plane_shape:
        chosen: str | list[int] | None = plane_list
    elif planes == "displayed plane" or not plane_shape:
        chosen = [flat(displayed) if plane_shape else 0]
    elif planes == "all planes":
        chosen = list(range(int(np.prod(plane_shape))))
    else:
        chosen = [flat(p) for p in tracker.trusted_planes()]
    channel = None
    if image_layer.rgb:  # the channel its segmentation took (`layer_channel`), else the one it would take
        channel = colour_channel(image_layer.data, labels_layer.metadata.get("napari_unet", {}).get("layer_channel"))
    images, labels, masks, kept = training_planes(
        image_layer.data, labels_layer.data, tracker.trusted, planes=chosen, trust=mode, rgb=bool(image_layer.rgb),
        channel=channel,
    )  # fmt: skip
    kept = [tuple(int(i) for i in np.unravel_index(k, plane_shape)) if plane_shape else () for k in kept]
    req = TrainingRequest(images, labels, masks, kept)
    if mode != "all" and len(shape) == 3 and not image_layer.rgb and layer_axes(image_layer) == "ZYX":
        # Corrections painted in the 3D view or with the dims rolled: their XZ / YZ slices teach too.
        side = side_view_planes(
            image_layer.data, labels_layer.data, tracker.trusted, anisotropy=layer_anisotropy(image_layer)
        )
        if side[0]:
            req.images += side[0]
            req.labels += side[1]
            req.masks += side[2]
            req.extra["side_views"] = side[3]
    diameter = labels_layer.metadata.get("napari_unet", {}).get("diameter")
    req.diameter = float(diameter) if diameter else None
    if preview:
        plane = displayed if len(shape) > 2 else ()
        yx = visible_yx(image_layer)
        whole = _plane_image(image_layer, plane, channel)
        region = whole[yx]
        if min(region.shape) >= 16:
            req.preview, req.preview_yx = np.ascontiguousarray(region), yx
            req.preview_range = percentile_range(without_overlays(np.asarray(whole))[0])
    return req
