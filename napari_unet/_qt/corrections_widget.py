"""The Corrections widget: what the user vouches for (trusted mask), review marks, fast editing helpers.

Painting itself is napari's own brush, eraser, fill and undo on the Labels layer; this widget shows
what has been recorded, marks planes / the view / drawn boxes as fully reviewed, and offers the
helpers that make correcting fast: a fresh id for a new object, delete, merge and split.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels, Shapes
from qtpy.QtWidgets import QCheckBox, QGridLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from . import notify
from .controls import LayerCombo, form, scroll_in
from .layers import current_plane, visible_yx
from .session import session_for

REVIEW_BOXES = "review boxes"
NEXT_KEY, ACCEPT_KEY = "Shift-N", "Shift-A"
TRUSTED_OVERLAY = "trusted pixels"


class CorrectionsWidget(QWidget):
    """Record corrections of a Labels layer and edit it quickly.

    Args:
        napari_viewer: The viewer (napari passes it when docking the widget).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer  # napari's public proxy when docked from the Plugins menu
        self.session = session_for(self.viewer)
        self.labels = LayerCombo(self.viewer, Labels)
        self.this_plane = QCheckBox("helpers act on the displayed plane only", checked=True)
        self.merge_ids = QLineEdit(placeholderText="ids to merge, e.g. 12 15 (first is kept)")
        self.show_trusted = QCheckBox("show trusted pixels")
        self.counts = QLabel(wordWrap=True)
        self.status = QLabel(wordWrap=True)
        self.queue_status = QLabel(wordWrap=True)
        self.current: int | None = None  # the object the queue shows
        self._keyed: set[int] = set()  # layers whose keys are bound

        buttons = {
            "new": ("New object", "select a label id no object uses yet, then paint", self.new_object),
            "delete": ("Delete object", "erase the selected label", self.delete_object),
            "split": ("Split object", "split the selected label at its neck / into its parts", self.split_object),
            "merge": ("Merge", "give the listed objects the first one's id", self.merge_objects),
            "plane": ("Plane reviewed", "every pixel of the displayed plane is correct", self.mark_plane),
            "view": ("View reviewed", "every pixel in view is correct", self.mark_view),
            "draw": ("Draw boxes", "draw rectangles to mark as reviewed", self.draw_boxes),
            "boxes": ("Boxes reviewed", "mark the drawn rectangles as reviewed", self.mark_boxes),
            "clear": ("Forget trusted", "forget what was painted / reviewed (labels unchanged)", self.clear),
            "save": ("Save now", "write the autosave now", self.save_now),
            "next": ("Next doubtful", f"show the object the model believes least, not yet reviewed ({NEXT_KEY})",
                     self.next_doubtful),
            "accept": ("Accept", f"the shown object is right: its pixels and outline become trusted ({ACCEPT_KEY})",
                       self.accept_current),
        }  # fmt: skip
        self.buttons = {}
        for key, (text, tip, slot) in buttons.items():
            b = QPushButton(text, toolTip=tip)
            b.clicked.connect(lambda _=False, s=slot: self._safely(s))
            self.buttons[key] = b

        top = QWidget()
        f = form(top)
        f.addRow("labels", self.labels)
        edit = QWidget()
        g = QGridLayout(edit)
        g.setContentsMargins(0, 0, 0, 0)
        for i, key in enumerate(("new", "delete", "split")):
            g.addWidget(self.buttons[key], 0, i)
        g.addWidget(self.merge_ids, 1, 0, 1, 2)
        g.addWidget(self.buttons["merge"], 1, 2)
        review = QWidget()
        r = QGridLayout(review)
        r.setContentsMargins(0, 0, 0, 0)
        for i, key in enumerate(("plane", "view", "draw", "boxes", "clear", "save")):
            r.addWidget(self.buttons[key], i // 3, i % 3)
        content = QWidget()
        lay = QVBoxLayout(content)
        lay.addWidget(top)
        lay.addWidget(QLabel("<b>Edit</b> (undo with napari's undo)"))
        lay.addWidget(edit)
        lay.addWidget(self.this_plane)
        lay.addWidget(QLabel("<b>Review</b> (trusted pixels train the model)"))
        lay.addWidget(review)
        lay.addWidget(self.show_trusted)
        lay.addWidget(QLabel("<b>Doubt queue</b> (lowest confidence first; fix the object, or accept it)"))
        queue = QWidget()
        q = QGridLayout(queue)
        q.setContentsMargins(0, 0, 0, 0)
        q.addWidget(self.buttons["next"], 0, 0)
        q.addWidget(self.buttons["accept"], 0, 1)
        lay.addWidget(queue)
        lay.addWidget(self.queue_status)
        lay.addWidget(self.counts)
        lay.addWidget(self.status)
        lay.addStretch(1)
        scroll_in(self, content)

        self.labels.layer_changed.connect(lambda _: self.update_counts())
        self.labels.layer_changed.connect(lambda _: self._bind_keys())
        self.session.trackers_changed.connect(self.update_counts)
        self.show_trusted.toggled.connect(lambda _: self.update_counts())
        self.update_counts()
        self._bind_keys()

    # --- helpers -------------------------------------------------------------------------------
    def _tracker(self):
        layer = self.labels.layer()
        if layer is None:
            raise ValueError("No labels layer: segment an image first, or add a Labels layer to paint in.")
        return self.session.tracker(layer)

    def _plane(self, layer) -> tuple[int, ...] | None:
        if layer.ndim == 2:
            return ()
        return current_plane(self.viewer, layer) if self.this_plane.isChecked() else None

    def _safely(self, slot) -> None:
        try:
            message = slot()
        except ValueError as exc:
            message = notify.error(exc)
        if message:
            self.status.setText(message)
        self.update_counts()

    def update_counts(self) -> None:
        """Refresh the summary (and the trusted-pixel overlay when shown)."""
        layer = self.labels.layer()
        if layer is None:
            self.counts.setText("no labels layer")
            return
        t = self.session.tracker(layer)
        planes = t.trusted_planes()
        where = f" in {len(planes)} plane(s)" if layer.ndim > 2 else ""
        saved = f"\nautosaved to {self.session.last_saved}" if self.session.last_saved else ""
        self.counts.setText(f"{t.n_trusted:,} trusted pixels{where}; {len(t.reviewed)} region(s) reviewed{saved}")
        self._overlay(layer, t)

    # --- the doubt queue ------------------------------------------------------------------------
    def _bind_keys(self) -> None:
        layer = self.labels.layer()
        if layer is None or hash(layer) in self._keyed:
            return
        self._keyed.add(hash(layer))
        layer.bind_key(NEXT_KEY, lambda _layer: self._safely(self.next_doubtful), overwrite=True)
        layer.bind_key(ACCEPT_KEY, lambda _layer: self._safely(self.accept_current), overwrite=True)

    def _queue(self, layer) -> tuple[list[int], set[int]]:
        """(ids by ascending score, ids already reviewed in the queue) of a layer with scores."""
        table = layer.features
        if "index" not in table or "score" not in table:
            raise ValueError(
                f"'{layer.name}' has no confidence scores: segment the image with the Segment widget first"
            )
        order = [int(i) for i in table.sort_values("score", kind="stable")["index"].tolist()]
        done = set(layer.metadata.setdefault("napari_unet", {}).setdefault("queue_done", []))
        return order, done

    def next_doubtful(self) -> str:
        """Show and select the lowest-scored object not reviewed yet (the one shown before counts as reviewed)."""
        layer = self.labels.layer()
        if layer is None:
            raise ValueError("No labels layer: segment an image first.")
        order, done = self._queue(layer)
        meta = layer.metadata["napari_unet"]
        if self.current is not None and self.current not in done:
            meta["queue_done"].append(self.current)
            done.add(self.current)
        data = np.asarray(layer.data)
        present = set(np.unique(data).tolist())
        nxt = next((i for i in order if i not in done and i in present), None)
        self.current = nxt
        if nxt is None:
            self._queue_text(layer)
            return "every scored object has been reviewed"
        where = np.nonzero(data == nxt)
        if data.ndim > 2:  # go to the plane where the object is largest
            planes, counts = np.unique(np.stack(where[:-2]), axis=1, return_counts=True)
            plane = planes[:, int(np.argmax(counts))]
            for axis, value in enumerate(plane):
                self.viewer.dims.set_current_step(axis, int(value))
        centre = np.array([float(np.mean(w)) for w in where])
        world = np.asarray(layer.data_to_world(centre))
        self.viewer.camera.center = tuple(world[-2:]) if self.viewer.dims.ndisplay == 2 else tuple(world[-3:])
        layer.selected_label = nxt
        self._queue_text(layer)
        score = float(layer.features.set_index("index").loc[nxt, "score"])
        return f"object {nxt}: confidence {score:.2f}; fix it, or Accept ({ACCEPT_KEY}); next: {NEXT_KEY}"

    def accept_current(self) -> str:
        """The shown object is right: it becomes trusted pixels and counts as reviewed."""
        layer = self.labels.layer()
        if layer is None or self.current is None:
            raise ValueError("No object shown: click Next doubtful first.")
        n = self.session.tracker(layer).accept(self.current)
        accepted = self.current
        meta = layer.metadata.setdefault("napari_unet", {})
        if accepted not in meta.setdefault("queue_done", []):
            meta["queue_done"].append(accepted)
        msg = f"object {accepted} accepted ({n:,} pixels trusted)"
        nxt = self.next_doubtful()
        return f"{msg}; {nxt}"

    def _queue_text(self, layer) -> None:
        order, done = self._queue(layer)
        self.queue_status.setText(f"{len(done & set(order))} of {len(order)} scored objects reviewed")

    def _overlay(self, layer, tracker) -> None:
        existing = next((la for la in self.viewer.layers if la.name == TRUSTED_OVERLAY), None)
        if not self.show_trusted.isChecked():
            if existing is not None:
                self.viewer.layers.remove(existing)
            return
        mask = tracker.trusted.view(np.uint8)
        if existing is None or existing.data.shape != mask.shape:
            if existing is not None:
                self.viewer.layers.remove(existing)
            overlay = self.viewer.add_image(
                mask,
                name=TRUSTED_OVERLAY,
                scale=layer.scale,
                translate=layer.translate,
                colormap="green",
                blending="additive",
                opacity=0.2,
                contrast_limits=(0, 1),
                metadata={"napari_unet": {"role": "overlay"}},
            )
            # Below the labels, so the objects stay visible on top of the highlighted pixels.
            self.viewer.layers.move(self.viewer.layers.index(overlay), self.viewer.layers.index(layer))
            self.viewer.layers.selection.active = layer
        else:
            existing.data = mask

    # --- editing -------------------------------------------------------------------------------
    def new_object(self) -> str:
        t = self._tracker()
        label = t.fresh_id()
        t.layer.mode = "paint"
        self.viewer.layers.selection.active = t.layer
        return f"paint the new object with label {label}"

    def delete_object(self) -> str:
        t = self._tracker()
        label = int(t.layer.selected_label)
        n = t.delete(label, self._plane(t.layer))
        if not n:
            raise ValueError(f"label {label} is not here: pick the object first (color picker tool)")
        return f"deleted label {label} ({n} pixels)"

    def merge_objects(self) -> str:
        t = self._tracker()
        try:
            ids = [int(x) for x in self.merge_ids.text().replace(",", " ").split()]
        except ValueError:
            raise ValueError("list the label ids to merge as numbers, e.g. 12 15") from None
        if len(ids) < 2:
            raise ValueError("list at least two label ids to merge, e.g. 12 15")
        n = t.merge(ids, self._plane(t.layer))
        return f"merged {', '.join(map(str, ids[1:]))} into {ids[0]} ({n} pixels)"

    def split_object(self) -> str:
        t = self._tracker()
        label = int(t.layer.selected_label)
        plane = self._plane(t.layer)
        ids = t.split(label, plane if plane is not None else None)
        return f"split label {label} into {', '.join(map(str, ids))}"

    # --- review --------------------------------------------------------------------------------
    def mark_plane(self) -> str:
        t = self._tracker()
        plane = current_plane(self.viewer, t.layer) if t.layer.ndim > 2 else ()
        n = t.mark_plane(plane)
        return f"plane {plane or ''} marked reviewed ({n:,} pixels)".replace("plane  ", "plane ")

    def mark_view(self) -> str:
        t = self._tracker()
        plane = current_plane(self.viewer, t.layer) if t.layer.ndim > 2 else ()
        region = tuple(slice(i, i + 1) for i in plane) + visible_yx(t.layer)
        n = t.mark_region(region, "view")
        return f"visible region marked reviewed ({n:,} pixels)"

    def draw_boxes(self) -> str:
        layer = self.labels.layer()
        boxes = next((la for la in self.viewer.layers if isinstance(la, Shapes) and la.name == REVIEW_BOXES), None)
        if boxes is None:
            ndim = layer.ndim if layer is not None else 2
            boxes = self.viewer.add_shapes(
                name=REVIEW_BOXES, ndim=ndim, edge_color="yellow", face_color="transparent", edge_width=2
            )
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        return "draw rectangles around fully correct areas, then press 'Boxes reviewed'"

    def mark_boxes(self) -> str:
        t = self._tracker()
        boxes = next((la for la in self.viewer.layers if isinstance(la, Shapes) and la.name == REVIEW_BOXES), None)
        if boxes is None or not len(boxes.data):
            raise ValueError("no boxes drawn: press 'Draw boxes' and draw rectangles first")
        shape = t.layer.data.shape
        total = 0
        for verts in boxes.data:
            world = [boxes.data_to_world(v) for v in verts]
            pts = np.array([t.layer.world_to_data(w) for w in world])
            lo = np.floor(pts.min(0)).astype(int)
            hi = np.ceil(pts.max(0)).astype(int) + 1
            region = []
            for axis, n in enumerate(shape):
                if axis < len(shape) - 2:  # a plane axis: the box's own plane
                    k = int(np.clip(round(float(pts[0, axis])), 0, n - 1))
                    region.append(slice(k, k + 1))
                else:
                    region.append(slice(int(np.clip(lo[axis], 0, n)), int(np.clip(hi[axis], 0, n))))
            total += t.mark_region(tuple(region), "box")
        count = len(boxes.data)
        boxes.data = []
        self.viewer.layers.selection.active = t.layer
        return f"{count} box(es) marked reviewed ({total:,} pixels)"

    def clear(self) -> str:
        self._tracker().clear()
        return "forgot the trusted pixels of this layer (the labels are unchanged)"

    def save_now(self) -> str:
        t = self._tracker()
        path = self.session.save_layer(t.layer)
        return f"saved to {path}" if path else "nothing to save: this layer has not been edited"
