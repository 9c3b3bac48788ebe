"""npe2 reader: TIFF / OME-TIFF, zarr / OME-Zarr, and a folder of 2D images as one stack.

Axes and pixel size come from the file's metadata; channels become separate Image layers; files larger
than `core.io.LAZY_BYTES` open lazily (zarr/dask), so a stack bigger than memory opens at once.
Corrections autosaved for the image come back as Labels layers next to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..core.io import TIFF_SUFFIXES, is_zarr, read_image
from ..core.stack_io import (
    LayerData,
    image_layers,
    list_folder_images,
    ome_extra_scale,
    read_folder_stack,
    restored_layers,
)


def _supported(path: Path) -> bool:
    if is_zarr(path):
        return True
    if path.is_dir():
        return bool(list_folder_images(path))
    return path.name.lower().endswith(TIFF_SUFFIXES)


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return `read_paths` when every path is something this plugin reads, else None (napari tries others)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_supported(Path(p)) for p in paths):
        return None
    return read_paths


def _display_name(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_path(path: str | os.PathLike) -> list[LayerData]:
    """Layer data for one path: image layer(s), then any autosaved corrections."""
    path = Path(path)
    if path.is_dir() and not is_zarr(path):
        img = read_folder_stack(path)
    else:
        img = read_image(path)
    layers = image_layers(img, _display_name(path), scale=ome_extra_scale(path), source=str(path.absolute()))
    if img.metadata.get("labels"):  # `segment -o OUT.zarr`: its doubt map, when written, goes below the labels
        return _doubt_layers(path, layers[0]) + layers
    for layer in list(layers):
        layers.extend(restored_layers(layer))
    return layers


def _doubt_layers(path: Path, labels: LayerData) -> list[LayerData]:
    """The doubt map of a labels OME-Zarr (``OUT.zarr/doubt``, `--uncertainty`) as a multiscale Image layer."""
    from ..core.bigrun import DOUBT_PATH

    if not (path / DOUBT_PATH).is_dir():
        return []
    doubt = read_image(path / DOUBT_PATH)
    levels = doubt.metadata.get("levels") or [doubt.data]
    _, kwargs, _ = labels
    kwargs = {"name": f"{kwargs['name']} doubt", "scale": kwargs["scale"], "axis_labels": kwargs["axis_labels"],
              "colormap": "magma", "contrast_limits": (0, 255), "multiscale": len(levels) > 1}  # fmt: skip
    return [(levels if len(levels) > 1 else levels[0], kwargs, "image")]


def read_paths(path: str | list[str]) -> list[LayerData]:
    """The reader function napari calls (one path or a list of paths): layer data only, no side effects.

    Paint strokes are recorded from the moment a widget of the plugin is docked (it creates the
    viewer's `Session`); restored corrections carry their trusted pixels in their metadata.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out: list[LayerData] = []
    for p in paths:
        out.extend(read_path(p))
    return out
