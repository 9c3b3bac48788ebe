"""The Retrain widget: fine-tune the U-Net on the painted corrections, watch it learn, keep or revert.

Training runs in a worker (the engine's `train_iter`); the main thread only draws events: the loss
plot, a preview layer of the visible region, the progress bar. Stop closes the engine at its next
yield: nothing is saved and the model in use does not change. When a run ends, its new version is
selected everywhere and the image is re-segmented with it, keeping every painted pixel as painted.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.instances import merge_keep_painted
from ..core.jobs import Notice
from . import notify
from .controls import DeviceRow, LayerCombo, ModelCombo, form, is_source_image, row, scroll_in
from .layers import current_plane, layer_axes
from .loss_plot import LossPlot
from .models import TRAINING_PIXELS, metric_change, metric_name
from .retrain_data import PLANE_CHOICES, TRUST_CHOICES, build_request
from .runner import JobRunner
from .session import layer_meta, session_for

# What the engine's step-0 message says when too few trusted pixels can be held out.
TRAINING_PIXELS_NOTE = "validating on the training pixels"
REMOVE_DELAY_MS = 30  # lets the hidden preview and the new status be drawn before the preview is removed


class RetrainWidget(QWidget):
    """Fine-tune on corrections; live loss, validation metric and preview; select or revert versions.

    Args:
        napari_viewer: The viewer (napari passes it when docking the widget).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer  # napari's public proxy when docked from the Plugins menu
        self.session = session_for(self.viewer)
        self.last_result = None
        self.last_error: str | None = None
        self._request = None
        self._labels_layer = None
        self._image_layer = None
        self._preview_plane: tuple[int, ...] = ()
        self._pending = None
        self._training = False  # the runner's job is the training run (not the re-segmentation after it)
        self._saved_name: str | None = None  # the version the current run saved
        self.previews = 0  # previews shown during the current run
        self.background = True  # train below the GUI's OS priority (see runner.lower_thread_priority)

        self.image = LayerCombo(self.viewer, Image, accept=is_source_image)
        self.labels = LayerCombo(self.viewer, Labels)
        self.planes = QComboBox()
        self.planes.addItems(PLANE_CHOICES)
        self.plane_list = QLineEdit(placeholderText="or list planes: 0-3, 7")
        self.trust = QComboBox()
        self.trust.addItems(TRUST_CHOICES)
        self.seconds = QDoubleSpinBox(minimum=1.0, maximum=3600.0, value=60.0, decimals=0, suffix=" s")
        self.device = DeviceRow()
        self.init = ModelCombo()
        self.preview = QCheckBox("live preview of the visible region", checked=True)
        self.resegment = QCheckBox("re-segment when done (painted pixels kept)", checked=True)
        self.start_btn = QPushButton("Start")
        self.stop_btn = QPushButton("Stop", enabled=False)
        self.bar = QProgressBar(maximum=1000, textVisible=False)
        self.bar.setMaximumHeight(8)
        self.plot = LossPlot()
        self.versions = ModelCombo()
        self.use_btn = QPushButton(
            "Use / revert to this version", toolTip="make it the current model (versions are never deleted)"
        )
        self.export_btn = QPushButton(
            "Export…",
            toolTip="save the chosen version as a bioimage.io package (.zip), ONNX (.onnx) or TorchScript (.pt)",
        )
        self.status = QLabel(wordWrap=True)

        top = QWidget()
        f = form(top)
        f.addRow("image", self.image)
        f.addRow("labels", self.labels)
        f.addRow("planes", self.planes)
        f.addRow("", self.plane_list)
        f.addRow("trust", self.trust)
        f.addRow("time budget", self.seconds)
        f.addRow("device", self.device)
        f.addRow("start from", self.init)
        f.addRow("", self.preview)
        f.addRow("", self.resegment)
        bottom = QWidget()
        g = form(bottom)
        g.addRow("versions", self.versions)
        g.addRow("", row(self.use_btn, self.export_btn))
        content = QWidget()
        lay = QVBoxLayout(content)
        lay.addWidget(top)
        lay.addWidget(row(self.start_btn, self.stop_btn))
        lay.addWidget(self.bar)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.status)
        lay.addWidget(bottom)
        scroll_in(self, content, grow=True)  # the loss plot takes spare height

        self.runner = JobRunner(
            on_yield=self._on_event, on_error=self._on_error, on_finish=self._on_finish, on_notice=self._on_notice
        )
        self.start_btn.clicked.connect(lambda: self.start())
        self.stop_btn.clicked.connect(self.stop)
        self.use_btn.clicked.connect(lambda: self.use_version())
        self.export_btn.clicked.connect(lambda: self.export_version())
        self.exporter = JobRunner(on_return=self._on_exported, on_error=self._on_export_error)
        self.labels.layer_changed.connect(self._follow_labels)
        self.session.models_changed.connect(self._on_models_changed)
        self._follow_labels()
        threading.Thread(target=_warm_up, name="napari-unet warm-up", daemon=True).start()

    def _follow_labels(self, layer=None) -> None:
        layer = self.labels.layer()
        if layer is not None:
            image = self.session.image_for(layer)
            if image is not None:
                self.image.set_layer(image)

    def _on_models_changed(self, name: str) -> None:
        self.versions.refresh(select=name or None)
        self.init.refresh(select=name or None)

    def _fail(self, message: str) -> None:
        self.last_error = notify.error(message)
        self.status.setText(self.last_error)

    # --- start / stop --------------------------------------------------------------------------
    def start(self):
        """Start fine-tuning; returns the worker (None if nothing started)."""
        if self.runner.running:
            return None
        image, labels = self.image.layer(), self.labels.layer()
        if image is None:
            self._fail("No image layer: open the image the corrections belong to.")
            return None
        if labels is None:
            self._fail("No labels layer: segment the image and correct the result first.")
            return None
        tracker = self.session.tracker(labels)
        displayed = current_plane(self.viewer, labels) if labels.ndim > 2 else ()
        try:
            req = build_request(
                image,
                tracker,
                planes=self.planes.currentText(),
                plane_list=self.plane_list.text(),
                trust=self.trust.currentText(),
                displayed=displayed,
                preview=self.preview.isChecked(),
            )
        except ValueError as exc:
            self._fail(notify.plain_message(exc, "Cannot retrain"))
            return None
        self.last_error = None
        self._request, self._labels_layer, self._image_layer = req, labels, image
        self._preview_plane = displayed
        from ..api import train  # here, not at import: it imports torch; the API saves the new version

        job = train(
            req.images,
            req.labels,
            req.masks,
            device=self.device.device(),
            init=self.init.spec() or "current",
            seconds=float(self.seconds.value()),
            preview=req.preview,
            preview_every=3.0,
            preview_range=req.preview_range,
            diameter=req.diameter,
            make_current=True,
        )
        self.plot.clear()
        self.previews = 0
        self._training, self._saved_name = True, None
        self.runner.on_return = self._on_trained
        self._busy(True)
        n, side = len(req.planes), len(req.extra.get("side_views", []))
        views = f" + {side} XZ/YZ slice{'s' if side > 1 else ''}" if side else ""
        self.status.setText(f"training on {n} plane{'s' if n > 1 else ''}{views} for {self.seconds.value():.0f} s...")
        return self.runner.start(job, f"Retraining on {labels.name}", background=self.background)

    def stop(self) -> None:
        """Stop now, as the user sees it: nothing is saved and the model in use is unchanged.

        The status, the preview and the buttons change at once; the worker stops at the engine's next
        yield (up to one step, preview or validation later) and nothing it sends meanwhile is drawn.
        Start stays disabled ("stopping…") until then, so two runs never overlap.
        """
        if not self.runner.running or self.runner.cancelled:
            return
        self.runner.cancel()
        self._pending = None
        self.stop_btn.setEnabled(False)
        self.start_btn.setText("stopping…")
        self.bar.setValue(0)
        self._remove_preview(soon=True)
        if self._saved_name is None:
            self.status.setText("stopped: nothing was saved and the model in use is unchanged")
        else:
            self.status.setText(
                f"stopped re-segmenting: version '{self._saved_name}' was saved and is in use; the labels are unchanged"
            )

    def _busy(self, busy: bool) -> None:
        if not busy:
            self.start_btn.setText("Start")
        self.start_btn.setEnabled(not busy)
        self.stop_btn.setEnabled(busy)
        self.use_btn.setEnabled(not busy)
        if busy:
            self.bar.setValue(0)

    # --- events --------------------------------------------------------------------------------
    def _on_event(self, ev) -> None:
        if hasattr(ev, "fraction"):  # segmentation progress (re-segment after training)
            self.bar.setValue(int(ev.fraction * 1000))
            self.runner.set_fraction(ev.fraction, "re-segmenting")
            return
        self.plot.add(ev.step, ev.loss, getattr(ev, "smoothed_loss", None), ev.val_metric)
        budget = float(self.seconds.value())
        fraction = min(1.0, ev.elapsed_s / budget) if budget else 0.0
        self.bar.setValue(int(fraction * 1000))
        if TRAINING_PIXELS_NOTE in ev.message:
            self.plot.set_metric_name(TRAINING_PIXELS)
        self.status.setText(progress_line(ev))
        if ev.preview is not None and self._request is not None:
            self._show_preview(ev.preview)
            self.previews += 1
        # Last: a notification or the activity bar can process Qt events, and with them a Stop or the
        # run's end, which must not be drawn over by the rest of this (now stale) event.
        if "rolled back" in ev.message:
            notify.warning(ev.message)
        self.runner.set_fraction(fraction)

    @notify.guarded("Could not show the preview")
    def _show_preview(self, prob: np.ndarray) -> None:
        image, yx = self._image_layer, self._request.preview_yx
        name = f"{image.name} preview"
        scale = np.asarray(image.scale[-2:])
        translate = np.asarray(image.translate[-2:]) + scale * [yx[0].start, yx[1].start]
        existing = next((la for la in self.viewer.layers if la.name == name), None)
        if existing is not None and existing.data.shape == prob.shape:
            existing.data = prob
            existing.translate = translate
            return
        if existing is not None:
            self.viewer.layers.remove(existing)
        active = self.viewer.layers.selection.active
        self.viewer.add_image(
            prob,
            name=name,
            scale=scale,
            translate=translate,
            colormap="magma",
            opacity=0.6,
            blending="additive",
            contrast_limits=(0, 255),
            metadata={"napari_unet": {"role": "preview", "image": image.name}},
        )
        if active is not None:
            self.viewer.layers.selection.active = active

    def _on_notice(self, notice: Notice) -> None:
        notify.warning(notice.message)
        self.status.setText(notice.message)

    @notify.guarded("Training finished, but updating the widgets failed")
    def _on_trained(self, result) -> None:
        self.last_result = result
        self._saved_name = result.name
        m = result.metrics or {}
        change = metric_change(m)
        self.session.models_changed.emit(result.name)
        msg = f"saved version '{result.name}' ({m.get('steps', '?')} steps{', ' + change if change else ''})"
        if m.get("improved") is False:
            notify.warning(
                f"{msg}: its metric ({metric_name(m)}) dropped; you can revert to the previous version below"
            )
        else:
            notify.info(msg)
        self.status.setText(msg)
        if self.resegment.isChecked():
            self._resegment(result)

    def _resegment(self, result) -> None:
        """Segment the image with the new model and merge it under the user's painted pixels."""
        image, labels = self._image_layer, self._labels_layer
        if image is None or labels is None or image not in self.viewer.layers or labels not in self.viewer.layers:
            return
        tracker = self.session.tracker(labels)
        data = np.array(image.data, copy=True) if isinstance(image.data, np.ndarray) else image.data
        meta = layer_meta(labels)
        diameter = meta.get("diameter")
        plane = int(np.ravel_multi_index(self._preview_plane, labels.data.shape[:-2])) if labels.ndim > 2 else None
        from .. import api

        mode = {"mode": "3d", "anisotropy": meta["anisotropy"]} if meta.get("mode") == "3d" else {}
        job = api.segment_iter(
            data,
            result.model,
            device=self.device.device(),
            axes=layer_axes(image),
            diameter=float(diameter) if diameter else None,
            estimate_plane=None if mode else plane,
            **mode,
        )
        trusted = tracker.trusted.copy()

        @notify.guarded("Re-segmenting with the new model failed (your labels are unchanged)")
        def merged(seg) -> None:
            if labels not in self.viewer.layers or seg.labels.shape != labels.data.shape:
                return
            tracker.replace_data(merge_keep_painted(np.asarray(labels.data), seg.labels, trusted))
            layer_meta(labels).update({"model": result.name, "device": seg.device})
            self.status.setText(f"{self.status.text()}; re-segmented with it (painted pixels kept)")

        # Started once the training worker has finished (see _on_finish).
        self._pending = (job, merged)

    def _on_error(self, exc: BaseException) -> None:
        self.last_error = notify.error(exc, "Retraining failed (the model in use is unchanged)")
        self.status.setText(self.last_error)

    def _on_finish(self) -> None:
        self._busy(False)
        self.bar.setValue(0)
        training, self._training = self._training, False
        late = self.runner.result_after_cancel
        if self.runner.cancelled and training and late is not None:
            self._saved_too_late(late)
        pending, self._pending = self._pending, None
        if pending is not None and not self.runner.cancelled:
            job, merged = pending
            self.runner.on_return = merged
            self._busy(True)
            self.runner.start(job, "Re-segmenting with the new model")
            return
        self._remove_preview()

    @notify.guarded("Training finished, but updating the widgets failed")
    def _saved_too_late(self, result) -> None:
        """Stop came while the engine was already saving: the version exists and is in use; say so."""
        self.last_result, self._saved_name = result, result.name
        self.session.models_changed.emit(result.name)
        msg = (
            f"stopped too late to undo: the run had already finished and saved version '{result.name}', "
            "now the model in use (revert below if you do not want it); the labels were not re-segmented"
        )
        notify.warning(msg)
        self.status.setText(msg)

    def _remove_preview(self, soon: bool = False) -> None:
        """The preview only makes sense during a run: the labels show the outcome afterwards.

        With `soon`, the preview is hidden now and removed in the next turn of the event loop, once the
        hiding has been drawn: napari runs a full garbage collection when a layer goes (a third of
        a second with torch loaded), which would otherwise hold back the status and the canvas.
        """
        previews = [layer for layer in self.viewer.layers if layer_meta(layer).get("role") == "preview"]
        for layer in previews:
            if soon:
                layer.visible = False
            else:
                self.viewer.layers.remove(layer)
        if soon and previews:
            QTimer.singleShot(REMOVE_DELAY_MS, lambda: self._remove_preview())

    # --- versions ------------------------------------------------------------------------------
    def export_version(self, name: str | None = None, path: str | None = None):
        """Export a version (default: the one chosen in the list) in a worker; asks where when `path` is None.

        Returns:
            The worker, or None when nothing was started (dialog cancelled, an export running).
        """
        if self.exporter.running:
            return None
        name = name or self.versions.spec() or "current"
        asked = path is None
        if asked:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getSaveFileName(
                self, f"Export '{name}'", f"{name}.zip",
                "bioimage.io package (*.zip);;ONNX (*.onnx);;TorchScript (*.pt)",
            )  # fmt: skip
            if not path:
                return None
        self.export_btn.setEnabled(False)
        self.status.setText(f"exporting '{name}' to {path}...")
        # The file dialog asked before replacing an existing file; a path given in code never replaces one.
        return self.exporter.start(_export_job(name, path, overwrite=asked), f"Exporting {name}")

    def _on_exported(self, path) -> None:
        self.export_btn.setEnabled(True)
        msg = f"exported to {path}"
        notify.info(msg)
        self.status.setText(msg)

    def _on_export_error(self, exc: BaseException) -> None:
        self.export_btn.setEnabled(True)
        self.last_error = notify.error(exc, "Export failed (nothing was written)")
        self.status.setText(self.last_error)

    def use_version(self, name: str | None = None) -> str:
        """Make a version (default: the one chosen in the list) the current model everywhere."""
        from .models import set_current

        name = name or self.versions.spec() or "bundled"
        try:
            set_current(name)
        except ValueError as exc:
            return self._fail(notify.plain_message(exc, "Cannot switch model")) or ""
        self.session.models_changed.emit(name)
        msg = f"'{name}' is now the current model"
        notify.info(msg)
        self.status.setText(msg)
        return msg


def _export_job(name: str, path: str, overwrite: bool):
    """The export as a job for the runner (one step; exporting the bundled model takes a few seconds)."""
    from .. import api
    from ..core.segment import Progress

    yield Progress(0, 1, 0, 1, "exporting")
    return api.export(name, path, overwrite=overwrite)


def progress_line(ev) -> str:
    """The status line of a training event: its message, else step, loss (once finite), speed, time left."""
    if ev.message:
        return ev.message
    if not ev.step:
        return ""
    loss = f", loss {ev.loss:.3f}" if math.isfinite(ev.loss) else ""
    eta = f", {ev.eta_s:.0f} s left" if ev.eta_s is not None else ""
    return f"step {ev.step}{loss}, {ev.steps_per_s:.1f} steps/s{eta}"


def _warm_up() -> None:
    """Import the training engine ahead of the first run, at low priority.

    Building the first optimizer imports torch's compiler stack (~1000 modules); done during a run,
    those imports hold the GIL in bursts of a few hundred ms and the viewer stutters.
    """
    from .runner import lower_thread_priority

    lower_thread_priority()
    try:
        import torch._dynamo  # noqa: F401

        from ..core import train  # noqa: F401
    except Exception:  # noqa: BLE001 - a failed warm-up only means a slower first start
        pass
