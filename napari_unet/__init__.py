"""napari-unet: segment microscopy images with a U-Net, and teach it by painting corrections.

Importing this package is cheap: napari imports it to find the plugin manifest, so torch and the
engine load only when an API function is first used.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = [
    "InputError",
    "ModelFileError",
    "NapariUnetError",
    "current_version",
    "estimate_iter",
    "export",
    "list_versions",
    "load_model",
    "models_dir",
    "revert",
    "segment",
    "segment_iter",
    "train",
    "train_model",
]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
