"""Which pixels of a Labels layer the user vouches for: painted ones and regions marked reviewed.

A `CorrectionsTracker` listens to the layer's ``paint`` event, which napari emits once per brush
stroke, fill, polygon, eraser stroke or `Labels.data_setitem` call with the changed pixels. Those pixels,
plus the planes and boxes the user marks as fully reviewed, make the *trusted mask* that training uses.
Undo does not emit ``paint``: undone strokes stay trusted (the user has looked at those pixels).

The editing helpers (fresh id, delete, merge, split) go through `data_setitem`, so they are undoable
with napari's undo and are recorded like any stroke.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from ..core.autosave import META_KEY


class CorrectionsTracker:
    """Trusted-pixel mask and reviewed regions of one Labels layer.

    Args:
        layer: The napari Labels layer to follow.
        on_change: Called (no arguments) after every recorded change, e.g. to schedule an autosave.
    """

    def __init__(self, layer, on_change: Callable[[], None] | None = None) -> None:
        self.layer = layer
        self.on_change = on_change
        self.reviewed: list[dict] = []
        self._trusted: np.ndarray | None = None
        self._ignore_data = 0
        meta = layer.metadata.setdefault(META_KEY, {})
        saved = meta.pop("trusted", None)
        if saved is not None and np.shape(saved) == tuple(layer.data.shape):
            self._trusted = np.asarray(saved, bool).copy()
        self.reviewed = list(meta.pop("reviewed", []) or [])
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)

    def disconnect(self) -> None:
        """Stop listening to the layer."""
        self.layer.events.paint.disconnect(self._on_paint)
        self.layer.events.data.disconnect(self._on_data)

    # --- state -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.layer.data.shape)

    @property
    def trusted(self) -> np.ndarray:
        """Boolean mask, True = painted or reviewed (allocated on first use)."""
        if self._trusted is None or self._trusted.shape != self.shape:
            self._trusted = np.zeros(self.shape, bool)
        return self._trusted

    @property
    def n_trusted(self) -> int:
        return 0 if self._trusted is None else int(self._trusted.sum())

    @property
    def edited(self) -> bool:
        """Whether the user changed this layer (painting, helpers, or replacing its data)."""
        return bool(self.layer.metadata.get(META_KEY, {}).get("edited", False))

    def _set_edited(self) -> None:
        self.layer.metadata.setdefault(META_KEY, {})["edited"] = True

    def _changed(self) -> None:
        self._set_edited()
        if self.on_change is not None:
            self.on_change()

    # --- recording ---------------------------------------------------------------------------
    def _on_paint(self, event) -> None:
        atoms = event.value if isinstance(event.value, (list, tuple)) else [event.value]
        trusted = self.trusted
        for atom in atoms:
            slice_key = getattr(atom, "slice_key", None)
            if slice_key is not None:  # napari >= 0.6: bounding box + mask (None = the whole box)
                mask = getattr(atom, "mask", None)
                if mask is None:
                    trusted[slice_key] = True
                else:
                    trusted[slice_key] |= np.asarray(mask, bool).reshape(trusted[slice_key].shape)
            elif isinstance(atom, tuple) and len(atom) == 3:  # (indices, old values, new values)
                trusted[atom[0]] = True
        self._changed()

    def _on_data(self, event=None) -> None:
        if self._ignore_data:
            return
        if self._trusted is not None and self._trusted.shape != self.shape:
            self._trusted = None
            self.reviewed = []
        self._changed()

    def replace_data(self, data: np.ndarray) -> None:
        """Set the layer's data as the plugin's own update (not recorded as a user edit)."""
        self._ignore_data += 1
        try:
            self.layer.data = data
        finally:
            self._ignore_data -= 1

    def mark_region(self, region: tuple[slice, ...], kind: str = "box") -> int:
        """Mark every pixel in `region` (data coordinates) as reviewed; returns how many pixels."""
        region = tuple(region) + (slice(None),) * (len(self.shape) - len(region))
        self.trusted[region] = True
        self.reviewed.append({"kind": kind, "region": [[s.start, s.stop] for s in region]})
        self._changed()
        return int(np.prod([len(range(*s.indices(n))) for s, n in zip(region, self.shape)]))

    def accept(self, label: int, ring: int = 2) -> int:
        """The user vouches that object `label` is right as it is: its pixels, and a `ring` of
        background around it (its outline), become trusted; returns how many pixels."""
        data = np.asarray(self.layer.data)
        where = np.nonzero(data == label)
        if not where[0].size:
            return 0
        lo = [max(0, int(w.min()) - (ring if k >= data.ndim - 2 else 0)) for k, w in enumerate(where)]
        hi = [
            min(n, int(w.max()) + 1 + (ring if k >= data.ndim - 2 else 0))
            for k, (w, n) in enumerate(zip(where, data.shape))
        ]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        crop = data[box]
        obj = crop == label
        structure = np.zeros((1,) * (data.ndim - 2) + (3, 3), bool)
        structure[(0,) * (data.ndim - 2)] = True  # grow within each plane only
        grown = ndi.binary_dilation(obj, structure=structure, iterations=ring) & ((crop == 0) | obj)
        self.trusted[box] |= grown
        self.reviewed.append({"kind": "object", "label": int(label)})
        self._changed()
        return int(grown.sum())

    def mark_plane(self, plane: tuple[int, ...]) -> int:
        """Mark a whole 2D plane (its index along the non-YX axes) as reviewed."""
        region = tuple(slice(int(i), int(i) + 1) for i in plane) + (slice(None), slice(None))
        return self.mark_region(region, "plane")

    def clear(self) -> None:
        """Forget every painted and reviewed pixel (the labels stay as they are)."""
        self._trusted = None
        self.reviewed = []
        if self.on_change is not None:
            self.on_change()

    def trusted_planes(self) -> list[tuple[int, ...]]:
        """Indices of the 2D planes holding at least one trusted pixel."""
        if self._trusted is None:
            return []
        if self._trusted.ndim == 2:
            return [()] if self._trusted.any() else []
        flat = self._trusted.reshape(-1, *self._trusted.shape[-2:]).any(axis=(1, 2))
        return [tuple(int(i) for i in np.unravel_index(k, self._trusted.shape[:-2])) for k in np.flatnonzero(flat)]

    # --- editing helpers -----------------------------------------------------------------------
    def _set(self, index: tuple[np.ndarray, ...], value) -> None:
        if index[0].size:
            self.layer.data_setitem(index, value)

    def fresh_id(self) -> int:
        """Select a label id that no object uses yet (max + 1), ready to paint a new object."""
        new = int(np.asarray(self.layer.data).max(initial=0)) + 1
        self.layer.selected_label = new
        return new

    def delete(self, label: int, plane: tuple[int, ...] | None = None) -> int:
        """Erase object `label` (in one plane only, if given); returns the pixels erased."""
        index = self._where(label, plane)
        self._set(index, 0)
        return int(index[0].size)

    def merge(self, labels: list[int], plane: tuple[int, ...] | None = None) -> int:
        """Give every object in `labels` the first one's id; returns the pixels relabelled."""
        if len(labels) < 2:
            raise ValueError("choose at least two labels to merge")
        target = int(labels[0])
        data = np.asarray(self.layer.data)
        view = data if plane is None else data[plane]
        hit = np.nonzero(np.isin(view, [int(v) for v in labels[1:]]))
        index = hit if plane is None else _lift(plane, hit)
        self._set(index, target)
        return int(index[0].size)

    def split(self, label: int, plane: tuple[int, ...] | None = None, pieces: int = 2) -> list[int]:
        """Split object `label`: its disconnected parts apart, else a watershed on its distance map.

        Returns:
            The ids of the parts (the first keeps `label`).
        """
        data = np.asarray(self.layer.data)
        view = data if plane is None else data[plane]
        obj = view == label
        if not obj.any():
            raise ValueError(f"label {label} is not in this {'plane' if plane is not None else 'layer'}")
        parts, n = ndi.label(obj)
        if n < 2 and obj.ndim == 2:
            parts = _watershed_split(obj, pieces)
            n = int(parts.max())
        if n < 2:
            raise ValueError(f"label {label} looks like a single round object; paint the split by hand")
        start = int(data.max()) + 1
        new_ids = [label] + list(range(start, start + n - 1))
        values = np.asarray(new_ids, dtype=data.dtype)[parts[obj] - 1]
        hit = np.nonzero(obj)
        index = hit if plane is None else _lift(plane, hit)
        self._set(index, values)
        return new_ids

    def _where(self, label: int, plane: tuple[int, ...] | None) -> tuple[np.ndarray, ...]:
        data = np.asarray(self.layer.data)
        if plane is None:
            return np.nonzero(data == label)
        return _lift(plane, np.nonzero(data[plane] == label))


def _lift(plane: tuple[int, ...], index: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Indices within one plane -> indices in the full array."""
    n = index[0].size
    return tuple(np.full(n, int(i)) for i in plane) + tuple(index)


def _watershed_split(obj: np.ndarray, pieces: int) -> np.ndarray:
    """Split one connected object into up to `pieces` parts at its necks (distance-map watershed)."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(obj)
    radius = max(1, int(dist.max() * 0.5))
    peaks = peak_local_max(
        dist, min_distance=radius, labels=obj.astype(np.int32), num_peaks=pieces, exclude_border=False
    )
    if len(peaks) < 2:
        return obj.astype(np.int32)
    markers = np.zeros(obj.shape, np.int32)
    for k, (y, x) in enumerate(peaks[:, -2:], start=1):
        markers[y, x] = k
    return watershed(-dist, markers, mask=obj)
