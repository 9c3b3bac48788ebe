"""npe2 writer: a Labels layer -> a compressed TIFF of integer labels (atomic write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import write_labels


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer; napari has already asked before replacing an existing file.

    Args:
        path: Target file; ``.tif`` is appended when it has no TIFF suffix.
        data: The layer's data (numpy or lazy array).
        meta: The layer's attributes (name, scale, metadata...).

    Returns:
        The paths written.
    """
    target = Path(path)
    if not target.name.lower().endswith((".tif", ".tiff")):
        target = target.with_name(target.name + ".tif")
    axes = (meta.get("metadata") or {}).get("napari_unet", {}).get("axes")
    info = {"name": meta.get("name"), "scale": [float(s) for s in meta.get("scale", [])]}
    write_labels(target, np.asarray(data), overwrite=True, axes=axes, metadata=info)
    return [str(target)]
