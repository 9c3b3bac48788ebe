"""npe2 writer: a Labels layer -> a compressed TIFF of integer labels (atomic write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import DEFAULT_LABEL_AXES, write_labels


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
    data = np.asarray(data)
    axes = (meta.get("metadata") or {}).get("napari_unet", {}).get("axes")
    axes = axes if axes and len(axes) == data.ndim else None  # None: the default for its dimensionality
    scale = [float(s) for s in meta.get("scale", [])]
    letters = axes or DEFAULT_LABEL_AXES.get(data.ndim, "")
    sizes = dict(zip(letters, scale)) if len(scale) == len(letters) else None
    write_labels(target, data, overwrite=True, axes=axes, scale=sizes, name=meta.get("name"))
    return [str(target)]
