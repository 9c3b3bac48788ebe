"""Sample data (File > Open Sample > napari U-Net): real nuclei, a 2D image and a 3D stack.

Both are small crops of public data; see ``resources/samples/README.md`` for sources and licences.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import tifffile

from ..core.io import ImageData
from ..core.stack_io import LayerData, image_layers, restored_layers

SAMPLES = {
    "nuclei2d": ("nuclei2d_u2os.tif", "U2OS nuclei (2D)", "YX", {}),
    "nuclei3d": ("nuclei3d_cells3d.tif", "cells3d nuclei (3D)", "ZYX", {"Z": 0.29, "Y": 0.26, "X": 0.26}),
}


def sample_path(key: str) -> Path:
    """Installed path of a sample file."""
    return Path(str(resources.files("napari_unet") / "resources" / "samples" / SAMPLES[key][0]))


def load_sample(key: str, *, restore: bool = True) -> list[LayerData]:
    """Layer data of one sample, plus any corrections autosaved for it (unless `restore` is False); no side effects."""
    filename, name, axes, scale = SAMPLES[key]
    data = tifffile.imread(sample_path(key))
    layers = image_layers(ImageData(data, axes), name, scale=scale, key=f"sample-{key}")
    if restore:
        layers += restored_layers(layers[0])
    return layers


def nuclei_2d() -> list[LayerData]:
    """A real 2D widefield image of U2OS nuclei, 512x512 (mnfinder, MIT)."""
    return load_sample("nuclei2d")


def nuclei_3d() -> list[LayerData]:
    """A real confocal stack of nuclei, 24x192x192 (scikit-image cells3d, BSD-3)."""
    return load_sample("nuclei3d")
