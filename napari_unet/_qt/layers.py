"""Between napari layers and the engine: what to segment (scope), and where results go.

`make_request` snapshots the chosen part of an image layer on the main thread (numpy data is copied,
lazy data stays lazy: nobody paints into it); `apply_labels` puts a result into the viewer, replacing
the plugin's own earlier prediction for that image unless the user has edited it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from napari.layers import Image, Labels

from ..core.errors import InputError
from ..core.io import voxel_anisotropy
from ..core.normalize import axes_from_names
from ..core.stack_io import _as_lazy
from .corrections import META_KEY
from .session import layer_meta, session_for, spatial_shape

SCOPES = ("whole image", "current plane", "visible region")
MIN_REGION = 16


@dataclass
class SegmentRequest:
    """A snapshot of what to segment and where its labels go.

    Attributes:
        image_name: The image layer's name.
        data: The pixels to segment (a copy, or a lazy view).
        axes: Axis letters of `data` (e.g. ``"YX"``, ``"ZYX"``, ``"YXC"``).
        region: Where the labels of `data` go in the full labels array (slices per spatial axis).
        shape: Spatial shape of the full image (= the labels layer's shape).
        scale, translate: Of the image's spatial axes, for the labels layer.
        plane: Flat index of the plane to estimate the diameter on (stacks only).
        meta: Identity of the image (source file / key), copied to the labels layer.
    """

    image_name: str
    data: object
    axes: str
    region: tuple[slice, ...]
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    plane: int | None = None
    meta: dict = field(default_factory=dict)
    axis_labels: tuple[str, ...] | None = None


def layer_axes(layer: Image) -> str:
    """Axis letters of an image layer's data: from the plugin's metadata, else from the layer's axis labels
    (an xarray's dims, or labels set in napari: `normalize.axes_from_names`), else guessed from its shape."""
    ndim = layer.data.ndim
    axes = layer_meta(layer).get("axes") or axes_from_names(getattr(layer, "axis_labels", ()))
    if axes and len(axes) == ndim - (1 if layer.rgb else 0):
        return axes + ("C" if layer.rgb else "")
    if layer.rgb:
        base = "YX" if ndim == 3 else ("ZYX" if ndim == 4 else None)
        if base is None:
            raise InputError(f"cannot segment a {ndim - 1}-D colour image: use Load stack to set its axes")
        return base + "C"
    guess = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(ndim)
    if guess is None:
        raise InputError(f"the image has {ndim} dimensions: segment 2D images or stacks (ZYX, TYX, TZYX)")
    return guess


def layer_voxel(layer) -> float | None:
    """Z step / XY pixel size of a ZYX layer from its scale (`io.voxel_anisotropy`); None where the layer has
    napari's default scale of 1 (no voxel size given) or the ratio is no plausible voxel."""
    z, x = float(layer.scale[-3]), float(layer.scale[-1])
    return None if z == x == 1.0 else voxel_anisotropy(z, x)


def layer_anisotropy(layer) -> float:
    """`layer_voxel`, or 1 where the layer gives none."""
    return layer_voxel(layer) or 1.0


def current_plane(viewer, layer) -> tuple[int, ...]:
    """Data index of the displayed plane along the layer's non-YX axes."""
    n_plane = layer.ndim - 2
    if n_plane <= 0:
        return ()
    point = np.asarray(viewer.dims.point, float)[-layer.ndim :]
    data_pos = np.asarray(layer.world_to_data(point), float)
    shape = spatial_shape(layer)
    return tuple(int(np.clip(round(data_pos[i]), 0, shape[i] - 1)) for i in range(n_plane))


def visible_yx(layer) -> tuple[slice, slice]:
    """The part of the layer's YX plane inside the canvas (whole plane if the canvas is not drawn yet)."""
    corners = np.asarray(layer.corner_pixels)
    shape = spatial_shape(layer)
    out = []
    for axis in (-2, -1):
        lo = int(np.clip(np.floor(corners[0, axis]), 0, shape[axis]))
        hi = int(np.clip(np.ceil(corners[1, axis]) + 1, 0, shape[axis]))
        out.append(slice(lo, hi))
    return tuple(out)


def _check_2d_view(viewer, layer, scope: str) -> None:
    if viewer.dims.ndisplay != 2:
        raise InputError(f"'{scope}' needs the 2D view: switch off 3D display, or segment the whole image")
    if layer.ndim > 2 and sorted(viewer.dims.displayed[-2:]) != [viewer.dims.ndim - 2, viewer.dims.ndim - 1]:
        raise InputError(f"'{scope}' needs the YX plane on screen: reset the axis order (transpose) first")


def make_request(viewer, layer: Image, scope: str = "whole image") -> SegmentRequest:
    """Snapshot the part of `layer` that `scope` names ("whole image", "current plane", "visible region")."""
    if not isinstance(layer, Image):
        raise InputError("choose an image layer to segment")
    if scope not in SCOPES:
        raise InputError(f"unknown scope '{scope}'")
    axes = layer_axes(layer)
    if "C" in axes and not axes.endswith("C"):
        raise InputError("this image keeps its channels inside one layer: open it with Load stack to split them")
    shape = spatial_shape(layer)
    n_plane = len(shape) - 2
    data = layer.data
    meta = {k: v for k, v in layer_meta(layer).items() if k in ("source", "key", "channel")}
    if not meta.get("source") and getattr(layer.source, "path", None):
        meta["source"] = str(layer.source.path)
    base = dict(
        image_name=layer.name,
        shape=shape,
        scale=tuple(layer.scale[-len(shape) :]),
        translate=tuple(layer.translate[-len(shape) :]),
        meta=meta,
        axis_labels=tuple(layer.axis_labels[-len(shape) :]),
    )
    if scope == "whole image" or n_plane == 0 and scope == "current plane":
        region = tuple(slice(0, s) for s in shape)
        snap = np.array(data, copy=True) if isinstance(data, np.ndarray) else _as_lazy(data)
        plane = None
        if n_plane:
            idx = current_plane(viewer, layer) if viewer.dims.ndisplay == 2 else tuple(s // 2 for s in shape[:-2])
            plane = int(np.ravel_multi_index(idx, shape[:-2]))
        return SegmentRequest(data=snap, axes=axes, region=region, plane=plane, **base)
    _check_2d_view(viewer, layer, scope)
    plane_idx = current_plane(viewer, layer)
    yx = (slice(0, shape[-2]), slice(0, shape[-1])) if scope == "current plane" else visible_yx(layer)
    if any(s.stop - s.start < MIN_REGION for s in yx):
        raise InputError("the visible region is too small to segment: zoom out a little")
    index = plane_idx + yx
    snap = np.array(np.asarray(data[index]), copy=True)
    region = tuple(slice(i, i + 1) for i in plane_idx) + yx
    return SegmentRequest(data=snap, axes=axes[n_plane:], region=region, **base)


def own_layer(viewer, image_name: str, role: str) -> Labels | Image | None:
    """The plugin's earlier output of `role` ("prediction" / "probability") for an image, if any."""
    for layer in reversed(list(viewer.layers)):
        meta = layer.metadata.get(META_KEY, {})
        if meta.get("role") == role and meta.get("image") == image_name:
            return layer
    return None


def _place(target: np.ndarray, region: tuple[slice, ...], values: np.ndarray, relabel: bool) -> None:
    """Write `values` into `target[region]`; with `relabel`, ids are shifted clear of those outside."""
    values = values.reshape(target[region].shape)
    if relabel and values.max(initial=0) > 0:
        target[region] = 0
        offset = int(target.max(initial=0))
        values = np.where(values > 0, values + offset, 0)
    target[region] = values


def apply_labels(viewer, request: SegmentRequest, labels: np.ndarray, info: dict) -> tuple[Labels, bool]:
    """Put a segmentation into the viewer.

    The plugin's own earlier prediction for the same image is updated in place (the part `request`
    covers) unless the user edited it: then a new layer is added and the edited one is left alone.

    Returns:
        (the layer, whether it is a new layer).
    """
    session = session_for(viewer)
    whole = all(s.start == 0 and s.stop == n for s, n in zip(request.region, request.shape))
    old = own_layer(viewer, request.image_name, "prediction")
    if old is not None and tuple(old.data.shape) == request.shape and not session.tracker(old).edited:
        if whole:
            session.tracker(old).replace_data(labels.reshape(request.shape).astype(np.int32, copy=False))
        else:
            _place(old.data, request.region, labels, relabel=True)
            old.refresh()
        layer_meta(old).update(info)
        return old, False
    data = np.zeros(request.shape, np.int32)
    _place(data, request.region, labels, relabel=False)
    meta = {META_KEY: {"role": "prediction", "image": request.image_name, "edited": False, **request.meta, **info}}
    layer = viewer.add_labels(
        data,
        name=f"{request.image_name} labels",
        scale=request.scale,
        translate=request.translate,
        metadata=meta,
        axis_labels=request.axis_labels,
    )
    return layer, True


def apply_probability(viewer, request: SegmentRequest, probs: np.ndarray) -> Image:
    """Show the foreground probability (uint8) next to the labels, replacing the earlier one."""
    old = own_layer(viewer, request.image_name, "probability")
    if old is not None and tuple(old.data.shape) == request.shape:
        old.data[request.region] = probs.reshape(old.data[request.region].shape)
        old.refresh()
        return old
    data = np.zeros(request.shape, np.uint8)
    data[request.region] = probs.reshape(data[request.region].shape)
    meta = {META_KEY: {"role": "probability", "image": request.image_name}}
    layer = viewer.add_image(
        data,
        name=f"{request.image_name} probability",
        scale=request.scale,
        translate=request.translate,
        metadata=meta,
        colormap="inferno",
        blending="additive",
        contrast_limits=(0, 255),
        opacity=0.6,
        axis_labels=request.axis_labels,
    )
    labels = own_layer(viewer, request.image_name, "prediction")
    if labels is not None:  # under the labels, so the masks stay readable on top of it
        viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(labels))
    return layer


def set_score_features(layer: Labels, region: tuple[slice, ...], result) -> None:
    """Put the objects' confidence scores in the layer's `features` table (napari's convention: an
    ``index`` column of label values), so that they show in the status bar and in table widgets.

    The labels may have been renumbered when placed into the layer (a region or a plane of a larger
    layer), so the scores follow the ids as they are in the layer; objects outside `region` keep theirs
    (an id painted away later keeps its row: a stale row is harmless, a lookup of the whole layer is not).
    """
    placed = np.asarray(layer.data[region]).reshape(result.labels.shape)
    fg = result.labels > 0
    if not fg.any() or not result.scores:
        return
    new_id = np.zeros(int(result.labels.max()) + 1, np.int64)
    new_id[result.labels[fg]] = placed[fg]
    table = {}
    old = layer.features
    if "index" in old and "score" in old:
        table = dict(zip(old["index"].tolist(), old["score"].tolist()))
    for i, v in result.scores.items():
        if 0 < i < new_id.size and new_id[i] > 0:
            table[int(new_id[i])] = float(v)
    ids = sorted(table)
    layer.features = {"index": ids, "score": [table[k] for k in ids]}
