"""State the widgets of one viewer share: correction trackers, autosave, and model-list changes.

One `Session` per viewer (looked up with `session_for`), created by the first widget that needs it. It
follows the viewer's layers: every Labels layer gets a `CorrectionsTracker`, edits are autosaved a
moment after they stop, and when an image is (re)opened its autosaved corrections come back.
"""

from __future__ import annotations

import weakref

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from psygnal import Signal
from qtpy.QtCore import QTimer

from ..core.autosave import SavedCorrections, candidate_paths, corrections_layers, save_corrections
from . import notify
from .corrections import META_KEY, CorrectionsTracker
from .runner import start_worker

AUTOSAVE_DELAY_MS = 1500

_SESSIONS: dict[int, Session] = {}


def session_for(viewer) -> Session:
    """The viewer's session (created on first use). `viewer` may be napari's public proxy.

    napari hands each docked widget its own proxy of the viewer, and a proxy hashes as the viewer it
    wraps (a viewer's hash is its identity), so the key is `hash(viewer)`. The session holds the
    viewer it was made with, so that identity cannot pass to another viewer while the entry exists.
    """
    key = hash(viewer)
    if key not in _SESSIONS:
        _SESSIONS[key] = Session(viewer)
    return _SESSIONS[key]


def layer_meta(layer) -> dict:
    """The plugin's metadata dict of a layer (created empty when missing)."""
    return layer.metadata.setdefault(META_KEY, {})


class Session:
    """Per-viewer shared state. Widgets connect to `models_changed` to refresh their model lists.

    Signals:
        models_changed(str): model versions changed; the argument is a name to select ("" for none).
        trackers_changed(): a tracker recorded something (widgets refresh their counts).
    """

    models_changed = Signal(str)
    trackers_changed = Signal()

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self._trackers: dict[int, CorrectionsTracker] = {}
        self._dirty: set[int] = set()
        self.last_saved: str | None = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_DELAY_MS)
        self._timer.timeout.connect(self.autosave)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        for layer in list(viewer.layers):
            self._adopt(layer)

    # --- trackers ------------------------------------------------------------------------------
    def tracker(self, layer: Labels) -> CorrectionsTracker:
        """The tracker of a Labels layer (attached on first request)."""
        key = id(layer)
        if key not in self._trackers:
            self._trackers[key] = CorrectionsTracker(layer, on_change=lambda k=key: self._on_change(k))
        return self._trackers[key]

    def _on_change(self, key: int) -> None:
        self._dirty.add(key)
        self._timer.start()
        self.trackers_changed.emit()

    def _adopt(self, layer) -> None:
        if isinstance(layer, Labels):
            self.tracker(layer)
        elif isinstance(layer, Image):
            # Deferred: the reader may be adding restored layers right after the image.
            ref = weakref.ref(layer)
            QTimer.singleShot(0, lambda: ref() is not None and self.restore(ref()))

    def _on_inserted(self, event) -> None:
        self._adopt(event.value)

    def _on_removed(self, event) -> None:
        key = id(event.value)
        if key in self._dirty:
            self.autosave(block=True, only=key)
        tracker = self._trackers.pop(key, None)
        if tracker is not None:
            tracker.disconnect()

    # --- which image a labels layer belongs to ----------------------------------------------------
    def image_for(self, labels: Labels) -> Image | None:
        """The image a labels layer annotates: from its metadata, else the one image of the same shape."""
        name = layer_meta(labels).get("image")
        if name and name in self.viewer.layers and isinstance(self.viewer.layers[name], Image):
            return self.viewer.layers[name]
        shape = tuple(labels.data.shape)
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and layer_meta(layer).get("role") is None and spatial_shape(layer) == shape:
                return layer
        return None

    def identity(self, layer) -> tuple[str | None, str]:
        """(source file, key) under which a layer's corrections are autosaved."""
        meta = layer_meta(layer)
        if isinstance(layer, Labels) and not (meta.get("source") or meta.get("key")):
            image = self.image_for(layer)
            if image is not None:
                return self.identity(image)
        source = meta.get("source")
        if source and meta.get("channel") is not None:
            source = f"{source}#c{meta['channel']}"
        if not source and getattr(layer.source, "path", None):
            source = str(layer.source.path)
        return source, meta.get("key") or layer.name

    # --- autosave / restore ----------------------------------------------------------------------
    def _snapshot(self, tracker: CorrectionsTracker) -> tuple:
        layer = tracker.layer
        source, key = self.identity(layer)
        path = candidate_paths(source, key, layer.name)[0]
        saved = SavedCorrections(
            np.array(layer.data, copy=True),
            tracker.trusted.copy(),
            layer.name,
            list(tracker.reviewed),
            {"source": source, "key": key},
        )
        return path, saved

    def autosave(self, block: bool = False, only: int | None = None) -> None:
        """Write the corrections of every layer changed since the last save (in a worker unless `block`)."""
        keys = [only] if only is not None else list(self._dirty)
        jobs = []
        for key in keys:
            self._dirty.discard(key)
            tracker = self._trackers.get(key)
            if tracker is not None and tracker.edited:
                jobs.append(self._snapshot(tracker))
        if not jobs:
            return
        if block:
            for path, saved in jobs:
                self._write(path, saved)
            return
        worker = create_worker(_write_all, jobs, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._saved)
        worker.errored.connect(lambda exc: notify.error(exc, "autosave of corrections failed"))
        start_worker(worker)

    def _write(self, path, saved) -> None:
        try:
            self._saved([save_corrections(path, saved)])
        except OSError as exc:
            notify.error(exc, "autosave of corrections failed")

    def _saved(self, paths: list) -> None:
        if paths:
            self.last_saved = str(paths[-1])

    def save_layer(self, layer: Labels) -> str | None:
        """Save one layer's corrections now (blocking); returns the file, or None if it was never edited."""
        tracker = self.tracker(layer)
        if not tracker.edited:
            return None
        self._dirty.discard(id(layer))
        path, saved = self._snapshot(tracker)
        self._write(path, saved)
        return str(path)

    def flush(self) -> None:
        """Save pending corrections now (blocking): before closing, in tests."""
        self._timer.stop()
        self.autosave(block=True)

    def restore(self, image: Image) -> list[Labels]:
        """Add the corrections autosaved for `image` that are not in the viewer yet."""
        if image not in self.viewer.layers:
            return []
        source, key = self.identity(image)
        present = {layer_meta(lay).get("restored_from") for lay in self.viewer.layers if isinstance(lay, Labels)}
        present |= {lay.name for lay in self.viewer.layers}
        shape = spatial_shape(image)
        n = len(shape)
        found = corrections_layers(source, key, image.name, shape, skip=present, scale=image.scale[-n:],
                                   translate=image.translate[-n:], axis_labels=image.axis_labels[-n:])  # fmt: skip
        added = [self.viewer.add_labels(data, **kwargs) for data, kwargs, _ in found]
        if added:
            notify.info(f"Restored your corrections of '{image.name}' ({', '.join(a.name for a in added)}).")
        return added


def _write_all(jobs: list) -> list:
    return [str(save_corrections(path, saved)) for path, saved in jobs]


def spatial_shape(layer) -> tuple[int, ...]:
    """Shape of an Image layer without its RGB axis (the shape its labels have)."""
    shape = tuple(layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape
