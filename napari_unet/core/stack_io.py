"""Image data -> napari layer data: axes, channels as separate layers, pixel size, folders of 2D images.

Pure numpy/dask (no Qt): shared by the reader, the sample data and the "Load stack" widget.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .autosave import META_KEY, corrections_layers
from .errors import InputError
from .io import LAZY_BYTES, PICTURE_SUFFIXES, ImageData, read_image
from .normalize import intensity_channels, nuclear_channel, resolve_axes, to_standard

FOLDER_SUFFIXES = (".tif", ".tiff", ".npy", *PICTURE_SUFFIXES)
CHANNEL_COLORMAPS = ("green", "magenta", "cyan", "yellow", "red", "blue")

LayerData = tuple[object, dict, str]


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_folder_images(folder: str | os.PathLike) -> list[Path]:
    """2D image files in `folder`, in natural order (img2 before img10); hidden files skipped."""
    folder = Path(folder)
    files = [
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.name.lower().endswith(FOLDER_SUFFIXES)
        and "corrections" not in p.name
    ]
    return sorted(files, key=_natural_key)


def _read_plane(path: Path) -> np.ndarray:
    return np.asarray(read_image(path).data)


def read_folder_stack(folder: str | os.PathLike, axis: str = "Z") -> ImageData:
    """A folder of same-sized 2D images as one stack along `axis` (``"Z"`` or ``"T"``).

    Large stacks are stacked lazily with dask, one file read per plane when needed.

    Raises:
        InputError: no images in the folder, images of different shapes, or images that are not 2D.
    """
    files = list_folder_images(folder)
    if not files:
        raise InputError(f"'{folder}' holds no images ({', '.join(FOLDER_SUFFIXES)})")
    first = _read_plane(files[0])
    if first.ndim != 2:
        raise InputError(f"'{files[0].name}' is not a 2D image (shape {first.shape}): a folder stack needs 2D images")
    if first.nbytes * len(files) > LAZY_BYTES:
        import dask
        import dask.array as da

        planes = [da.from_delayed(dask.delayed(_read_plane)(f), first.shape, first.dtype) for f in files]
        data = da.stack(planes)
    else:
        arrays = [first]
        for f in files[1:]:
            a = _read_plane(f)
            if a.shape != first.shape:
                raise InputError(
                    f"'{f.name}' is {a.shape[0]}x{a.shape[1]} but '{files[0].name}' is "
                    f"{first.shape[0]}x{first.shape[1]}: all images of a folder stack must match"
                )
            arrays.append(a)
        data = np.stack(arrays)
    return ImageData(data, f"{axis}YX")


def ome_extra_scale(path: Path) -> dict[str, float]:
    """Physical sizes the core reader does not report: Z spacing of an OME-TIFF, all axes of an OME-Zarr."""
    out: dict[str, float] = {}
    name = path.name.lower()
    try:
        if name.endswith((".ome.tif", ".ome.tiff")):
            import xml.etree.ElementTree as ET

            import tifffile

            with tifffile.TiffFile(path) as tif:
                if tif.ome_metadata:
                    pix = next(e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels"))
                    for ax in "ZYX":
                        v = pix.get(f"PhysicalSize{ax}")
                        if v:
                            out[ax] = float(v)
        elif path.is_dir():
            import zarr

            node = zarr.open(str(path), mode="r")
            attrs = dict(getattr(node, "attrs", {}))
            ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
            if ms:
                names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
                for t in ms[0]["datasets"][0].get("coordinateTransformations", []):
                    if t.get("type") == "scale":
                        out.update({n.upper(): float(s) for n, s in zip(names, t["scale"]) if n.upper() in "TZYX"})
    except Exception:  # noqa: BLE001 - metadata is a bonus; never fail opening because of it
        return out
    return out


def _as_lazy(data):
    """zarr arrays have no transpose/fancy slicing of their own: view them through dask."""
    if isinstance(data, np.ndarray) or hasattr(data, "compute"):
        return data
    import dask.array as da

    return da.from_zarr(data) if hasattr(data, "chunks") else np.asarray(data)


def image_layers(
    img: ImageData,
    name: str,
    *,
    axes: str | None = None,
    channel: int | None = None,
    scale: dict[str, float] | None = None,
    source: str | None = None,
    key: str | None = None,
) -> list[LayerData]:
    """Layer data for an image: one Image layer per channel, with scale and axes metadata.

    Of several channels, the one that looks most like a nuclear stain (`normalize.nuclear_channel`, as Segment's
    "auto" takes it) comes last: napari makes the last layer added the active one, and the Segment and Retrain
    widgets follow the active layer, so Segment runs on the nuclei, not on a marker beside them.

    Args:
        img: What the reader returned.
        name: Base layer name (channels get `` [c0]``, `` [c1]``...).
        axes: Axis letters overriding the file's (e.g. ``"CYX"``); None uses the file's, or guesses.
        channel: Keep only this channel; None keeps all, as separate layers.
        scale: Physical size per axis letter (``{"Z": 0.29, "Y": 0.26, "X": 0.26}``); missing = 1.
        source: The file the image came from, for autosaved corrections.
        key: A stable name when there is no file.
    """
    data = _as_lazy(img.data)
    axes = resolve_axes(tuple(data.shape), axes or img.axes)
    data, std = to_standard(data, axes)  # (T, Z, [C,] Y, X)
    sizes = dict(scale or {})
    if img.pixel_size and "Y" not in sizes:
        sizes["Y"], sizes["X"] = img.pixel_size[-2], img.pixel_size[-1]
    spatial_axes = std.replace("C", "")
    layer_scale = [float(sizes.get(a, 1.0)) for a in spatial_axes]
    axis_labels = [a.lower() for a in spatial_axes]
    base_meta = {"axes": spatial_axes, "source": source, "key": key or name}
    if img.metadata.get("labels"):  # an OME-Zarr of labels (`segment -o OUT.zarr`): a Labels layer
        levels = img.metadata.get("levels")  # all its levels, so that napari reads only what it shows
        if levels:
            data = [to_standard(_as_lazy(level), axes)[0] for level in levels]
        return [(data, {"name": name, "scale": layer_scale, "axis_labels": axis_labels}, "labels")]
    if "C" not in std:
        if channel not in (None, 0):
            raise InputError(f"channel {channel} requested but the image has no channel axis")
        meta = {META_KEY: dict(base_meta)}
        kwargs = {"name": name, "scale": layer_scale, "metadata": meta, "colormap": "gray", "axis_labels": axis_labels}
        return [(data, kwargs, "image")]
    c_axis = std.index("C")
    n_c = data.shape[c_axis]
    if channel is not None and not -n_c <= channel < n_c:
        raise InputError(f"channel {channel} does not exist: the image has {n_c} channels")
    channels = [channel % n_c] if channel is not None else list(range(n_c))
    n_intensity = intensity_channels(n_c, axes)
    if len(channels) > 1 and n_intensity > 1:
        nuclear = nuclear_channel(data, c_axis, n_intensity)
        channels = [c for c in channels if c != nuclear] + [nuclear]
    out = []
    for c in channels:
        sub = data[(slice(None),) * c_axis + (c,)]
        meta = {META_KEY: {**base_meta, "channel": c, "key": f"{key or name}-c{c}"}}
        kwargs = {
            "name": f"{name} [c{c}]" if len(channels) > 1 else name,
            "scale": layer_scale,
            "metadata": meta,
            "colormap": CHANNEL_COLORMAPS[c % len(CHANNEL_COLORMAPS)] if len(channels) > 1 else "gray",
            "blending": "additive",
            "axis_labels": axis_labels,
        }
        out.append((sub, kwargs, "image"))
    return out


def restored_layers(image_layer: LayerData) -> list[LayerData]:
    """Labels layers autosaved for an image layer's data (see `autosave.corrections_layers`)."""
    data, kwargs, _ = image_layer
    meta = kwargs.get("metadata", {}).get(META_KEY, {})
    source = meta.get("source") and _channel_source(meta)
    return corrections_layers(source, meta.get("key", kwargs["name"]), kwargs["name"], tuple(data.shape),
                              scale=kwargs.get("scale"), axis_labels=kwargs.get("axis_labels"))  # fmt: skip


def _channel_source(meta: dict) -> str:
    """Autosaves of one channel of a multichannel file are keyed by file + channel."""
    src = str(meta["source"])
    return src if meta.get("channel") is None else f"{src}#c{meta['channel']}"
