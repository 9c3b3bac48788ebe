"""The Segment widget: image, model, channel, diameter, device, scope -> a Labels layer."""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.atomic import unfinished_dir
from ..core.jobs import Notice
from ..core.scores import MIN_SCORE
from . import notify
from .controls import DeviceRow, LayerCombo, ModelCombo, form, is_source_image, row, scroll_in
from .layers import (
    SCOPES,
    apply_labels,
    apply_probability,
    layer_anisotropy,
    layer_axes,
    layer_voxel,
    make_request,
    set_score_features,
)
from .runner import JobRunner
from .session import session_for

LINK_IOU = 0.3  # overlap above which objects in neighbouring planes are one object
NO_IMAGE = "No image layer to segment: open an image (File > Open) or a sample (File > Open Sample > napari U-Net)."


class SegmentWidget(QWidget):
    """Segment the chosen image layer into instance labels with the U-Net.

    Args:
        napari_viewer: The viewer (napari passes it when docking the widget).

    Signals:
        finished: a run (or an estimate) has ended, successfully or not.
    """

    finished = Signal()

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer  # napari's public proxy when docked from the Plugins menu
        self.session = session_for(self.viewer)
        self.last_layer = None
        self.last_result = None
        self.last_error: str | None = None
        self.last_output = None  # the OME-Zarr of the last cluster run (to say where a cancelled one is kept)
        self.notes: list[str] = []  # the notices of the run under way (`_on_notice`)
        self._stack = False  # the chosen layer has planes (linking means something)

        self.image = LayerCombo(self.viewer, Image, accept=is_source_image)
        self.model = ModelCombo()
        refresh = QToolButton(text="↻", toolTip="re-list saved model versions")
        refresh.clicked.connect(lambda: self.model.refresh())
        self.channel = QComboBox(toolTip="channel to segment in a multichannel layer")
        self.diameter = QDoubleSpinBox(minimum=0.0, maximum=1000.0, decimals=1, singleStep=1.0, suffix=" px")
        self.diameter.setSpecialValueText("auto")
        self.diameter.setToolTip("typical object diameter; auto estimates it from the image")
        self.estimate_btn = QPushButton("Estimate")
        self.device = DeviceRow()
        self.scope = QComboBox()
        self.scope.addItems(SCOPES)
        self.probability = QCheckBox("add a probability layer")
        self.link = QCheckBox("one id per object across planes", checked=True)
        self.link.setToolTip("in a stack, give an object the id of the object it overlaps in the previous plane")
        self.objects_3d = QCheckBox("3D objects (Z is spatial; about 2-3x slower)")
        self.objects_3d.setToolTip(
            "segment a ZYX stack into 3D objects: the network on XY, XZ and YZ views, fused, and a 3D watershed"
        )
        self.anisotropy = QDoubleSpinBox(minimum=1.0, maximum=20.0, decimals=2, singleStep=0.5, value=1.0)
        self.anisotropy.setToolTip("Z step / XY pixel size of the stack (from the voxel size)")
        self.tta = QCheckBox("test-time augmentation (about 2x slower)")
        self.tta.setToolTip("average the network's output over four flips of the image")
        self.merge_cuts = QCheckBox("rejoin nuclei cut in two", checked=True)
        self.merge_cuts.setToolTip(
            "merge touching objects with a long shared border and a convex union; untick for overlapping nuclei"
        )
        self.min_score = QDoubleSpinBox(minimum=0.0, maximum=0.95, decimals=2, singleStep=0.05, value=MIN_SCORE)
        self.min_score.setToolTip(
            "drop objects whose confidence score is below this, or below half the plane's median score where "
            "that is lower (mostly false objects in autofluorescence, cytoplasm or debris), unless 1.5x as bright as "
            "the median object (a dividing cell's chromatin); 0 keeps every object. "
            "Set from the chosen model: 0.3 for the bundled one, 0 for fine-tuned versions"
        )
        self.cluster = QLineEdit(placeholderText="this machine (or local:N, tcp://host:8786)")
        self.cluster.setToolTip(
            "run the blocks on a dask cluster: local:N starts N workers here, an address uses a running cluster; "
            "the labels are written to an OME-Zarr beside the image's file (resumable) and shown from it"
        )
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel", enabled=False)
        self.bar = QProgressBar(maximum=1000, textVisible=False)
        self.bar.setMaximumHeight(8)
        self.status = QLabel(wordWrap=True)

        top = QWidget()
        f = form(top)
        f.addRow("image", self.image)
        f.addRow("model", row(self.model, refresh))
        f.addRow("channel", self.channel)
        f.addRow("diameter", row(self.diameter, self.estimate_btn))
        f.addRow("device", self.device)
        f.addRow("scope", self.scope)
        f.addRow("min score", self.min_score)
        f.addRow("cluster", self.cluster)
        f.addRow("", self.probability)
        f.addRow("", self.link)
        f.addRow("", self.objects_3d)
        f.addRow("anisotropy", self.anisotropy)
        f.addRow("", self.tta)
        f.addRow("", self.merge_cuts)
        content = QWidget()
        lay = QVBoxLayout(content)
        lay.addWidget(top)
        lay.addWidget(row(self.run_btn, self.cancel_btn))
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        lay.addStretch(1)
        scroll_in(self, content)

        self.runner = JobRunner(
            on_yield=self._on_progress, on_error=self._on_error, on_finish=self._on_finish, on_notice=self._on_notice
        )
        self.objects_3d.toggled.connect(self._on_3d_toggled)
        # 3D objects ticked for a stack with a voxel size, not by the user: a stack too thin for them falls back
        # to planes, as on the command line; a click on the box or an edited anisotropy makes 3D the user's
        self._3d_by_default = False
        self.objects_3d.clicked.connect(self._3d_chosen)
        self.anisotropy.editingFinished.connect(self._3d_chosen)
        self.run_btn.clicked.connect(lambda: self.run())
        self.cancel_btn.clicked.connect(self.runner.cancel)
        self.estimate_btn.clicked.connect(lambda: self.estimate())
        self.image.layer_changed.connect(self._update_channels)
        self.session.models_changed.connect(lambda name: self.model.refresh(select=name or None))
        self.model.currentIndexChanged.connect(lambda _: self._follow_model())
        self._update_channels()
        self._follow_model()

    # --- inputs --------------------------------------------------------------------------------
    def _follow_model(self) -> None:
        """The min score box takes the chosen model's own floor (`ModelInfo.min_score`), read from its header."""
        from .. import api
        from ..core.modelfile import ModelFileError, read_info

        try:
            self.min_score.setValue(read_info(api.resolve_model_path(self.model.spec() or "current")).min_score)
        except (ModelFileError, OSError, ValueError):
            pass  # an unreadable choice says so when it is run; the box keeps its value

    def _update_channels(self, layer=None) -> None:
        layer = self.image.layer()
        self.channel.clear()
        n, planes, axes = 0, False, None
        if layer is not None:
            try:
                axes = layer_axes(layer)
                n = layer.data.shape[-1] if axes.endswith("C") else 0
                planes = len(axes.replace("C", "")) > 2
            except ValueError:
                n, axes = 0, None
        self._stack = planes
        self.link.setEnabled(planes and not self.objects_3d.isChecked())  # linking: 2D objects of a stack
        zyx = axes == "ZYX"  # 3D objects: a single-channel stack whose Z is spatial
        self.objects_3d.setEnabled(zyx)
        # the default for a stack with a voxel size (its Z is spatial), as on the command line
        self.objects_3d.setChecked(zyx and layer_voxel(layer) is not None)
        self._3d_by_default = self.objects_3d.isChecked()
        self.anisotropy.setEnabled(zyx)
        if zyx:
            self.anisotropy.setValue(layer_anisotropy(layer))
        if n:
            self.channel.addItem("auto (the nuclear-looking one)", None)
            self.channel.addItem("average of channels", "mean")
            for c in range(n):
                self.channel.addItem(f"channel {c}", c)
        else:
            self.channel.addItem("single channel", None)
        self.channel.setEnabled(bool(n))

    def _3d_chosen(self) -> None:
        self._3d_by_default = False

    def _on_3d_toggled(self, on: bool) -> None:
        if not on:  # unticked: a later tick, by a click or from code, asks for 3D objects
            self._3d_by_default = False
        self.link.setEnabled(self._stack and not on)  # plane linking and the 2D rejoin step are for 2D objects
        self.merge_cuts.setEnabled(not on)

    def _diameter(self) -> float | None:
        return self.diameter.value() or None

    def _busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.estimate_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)
        if busy:
            self.bar.setValue(0)

    def _fail(self, message: str) -> None:
        self.last_error = notify.error(message)
        self.status.setText(self.last_error)

    # --- actions -------------------------------------------------------------------------------
    def run(self, scope: str | None = None):
        """Segment the chosen image; returns the worker (None if nothing started)."""
        layer, request = self._request(lambda layer: scope or self.scope.currentText(), "Cannot segment")
        if request is None:
            return None
        self.last_error = None
        from .. import api

        spec = self.model.spec() or "current"
        cluster = self.cluster.text().strip() or None
        self.last_output = None
        three_d = self.objects_3d.isChecked()
        if three_d and request.axes != "ZYX":
            self._fail("Cannot segment: 3D objects need the whole ZYX stack (scope 'whole image')")
            return None
        settings = dict(  # read here, on the GUI thread: the job starts in a worker
            device=self.device.device(), diameter=self._diameter(), channel=self.channel.currentData(),
            axes=request.axes, tta=self.tta.isChecked(), merge_cuts=self.merge_cuts.isChecked(),
            min_score=self.min_score.value(),
        )  # fmt: skip
        fallback = three_d and self._3d_by_default
        if cluster:
            return self._run_on_cluster(layer, request, spec, cluster, settings, fallback)
        probability = self.probability.isChecked()

        def job(mode: dict):
            planes = mode.get("mode") != "3d"
            return api.segment_iter(request.data, spec, probabilities=probability and planes,
                                    estimate_plane=request.plane if planes else None, **settings, **mode)  # fmt: skip

        self.runner.on_return = lambda result: self._on_segmented(layer, request, spec, result)
        self._busy(True)
        self.status.setText(f"segmenting '{layer.name}' ({self.scope.currentText() if scope is None else scope})...")
        return self.runner.start(self._job(job, fallback), f"Segmenting {layer.name}")

    def _job(self, job, fallback: bool):
        """`job(mode)` with the widget's mode; or, for 3D objects ticked by default, `segment3d.or_planes`."""
        from ..core.segment3d import or_planes

        if not fallback:
            return job(self._mode())
        return or_planes(job, self._mode(), {"link_iou": LINK_IOU if self.link.isChecked() else None})

    def _thin(self, layer, result) -> str:
        """After a fall back to planes: the note for the status, and the box unticked if the layer is still chosen."""
        from ..core.segment3d import THIN_NOTE

        if not result.extra.get("thin"):
            return ""
        if self.image.layer() is layer:
            self.objects_3d.setChecked(False)
        return THIN_NOTE

    def _mode(self) -> dict:
        """`segment_iter`'s 3D mode and anisotropy, or the plane linking of 2D objects."""
        if self.objects_3d.isChecked():
            return {"mode": "3d", "anisotropy": self.anisotropy.value()}
        return {"link_iou": LINK_IOU if self.link.isChecked() else None}

    def _run_on_cluster(self, layer, request, spec: str, cluster: str, settings: dict, fallback: bool):
        """Blocks on dask, labels to an OME-Zarr (`core.bigrun`); Cancel stops the cluster's work, keeping it to resume."""
        from .. import api
        from ..core.bigrun import default_output
        from ..core.io import FileArray

        source = request.meta.get("source")
        data = request.data
        if (
            source
            and "channel" not in request.meta
            and tuple(request.region) == tuple(slice(0, s) for s in request.shape)
        ):
            data = FileArray(source)  # workers reopen the file rather than receive the pixels
            if tuple(data.shape) != tuple(np.shape(request.data)):
                data = request.data
        try:
            out = default_output(source, layer.name)
        except ValueError as exc:
            self._fail(notify.plain_message(exc, "Cannot segment"))
            return None

        def job(mode: dict):
            return api.segment_iter(data, spec, output=out, cluster=cluster, **settings, **mode)

        self.runner.on_return = lambda result: self._on_segmented_zarr(layer, request, result)
        self._busy(True)
        self.notes = []
        self.last_output = out
        self.status.setText(f"segmenting '{layer.name}' on {cluster} -> {out.name}...")
        return self.runner.start(self._job(job, fallback), f"Segmenting {layer.name} on {cluster}")

    @notify.guarded("Could not show the segmentation")
    def _on_segmented_zarr(self, image_layer, request, result) -> None:
        from ..core.io import read_image

        img = read_image(result.path)  # every level, so that napari reads only what it shows
        labels = img.metadata.get("levels") or img.data
        layer = self.viewer.add_labels(
            labels, name=f"{request.image_name} labels ({result.path.name})", scale=request.scale,
            translate=request.translate,
        )  # fmt: skip
        self.last_layer, self.last_result = layer, result
        self.device.show_used(result.device)
        resumed = f", {result.resumed_blocks} from the unfinished run" if result.resumed_blocks else ""
        what = "3D objects" if "anisotropy" in result.extra else "objects"
        notes = [*self.notes, self._thin(image_layer, result)]
        self.status.setText(
            f"{result.n_objects} {what} in {result.blocks} blocks{resumed} -> {result.path}; "
            f"diameter {result.diameter:.1f} px" + "".join(f"; {n}" for n in notes if n)
        )

    def estimate(self):
        """Estimate the object diameter on the displayed plane; returns the worker."""
        _, request = self._request(
            lambda layer: "current plane" if layer.ndim > 2 else "whole image", "Cannot estimate the diameter"
        )
        if request is None:
            return None
        from .. import api

        job = api.estimate_iter(
            request.data,
            self.model.spec() or "current",
            device=self.device.device(),
            channel=self.channel.currentData(),
            axes=request.axes,
        )
        self.runner.on_return = self._on_estimated
        self._busy(True)
        self.status.setText("estimating the object diameter...")
        return self.runner.start(job, "Estimating object size")

    def _request(self, scope_of, failure: str):
        """(layer, request) for the chosen image at `scope_of(layer)`; (layer, None) after a notified failure."""
        if self.runner.running:
            return None, None
        layer = self.image.layer()
        if layer is None:
            self._fail(NO_IMAGE)
            return None, None
        try:
            return layer, make_request(self.viewer, layer, scope_of(layer))
        except ValueError as exc:
            self._fail(notify.plain_message(exc, failure))
            return layer, None

    # --- results -------------------------------------------------------------------------------
    def _on_progress(self, p) -> None:
        fraction = getattr(p, "fraction", None)
        if fraction is not None:
            self.bar.setValue(int(fraction * 1000))
            self.runner.set_fraction(fraction, getattr(p, "message", ""))

    def _on_notice(self, notice: Notice) -> None:
        notify.warning(notice.message)
        self.status.setText(notice.message)
        self.notes.append(notice.message)  # what a run to OME-Zarr's summary repeats (in memory: result.extra)

    @notify.guarded("Could not show the segmentation")
    def _on_segmented(self, image_layer, request, spec: str, result) -> None:
        info = {
            "model": spec,
            "diameter": round(result.diameter, 2),
            "device": result.device,
            "scope": self.scope.currentText(),
        }
        info["mode"] = "3d" if "anisotropy" in result.extra else "2d"  # a retrain re-segments the same way
        if result.extra.get("channel") is not None:  # and trains on the channel of a colour layer segmented here
            info["layer_channel"] = result.extra["channel"]
        if info["mode"] == "3d":
            info["anisotropy"] = result.extra["anisotropy"]
        layer, new = apply_labels(self.viewer, request, result.labels, info)
        set_score_features(layer, request.region, result)
        if result.probabilities is not None:
            apply_probability(self.viewer, request, result.probabilities)
        self.last_layer, self.last_result = layer, result
        self.device.show_used(result.device)
        n = int(np.count_nonzero(np.unique(result.labels)))
        planes = int(np.prod(result.labels.shape[:-2])) if result.labels.ndim > 2 else 1
        from ..core.segment import renormalised_note

        thin = self._thin(image_layer, result)
        notes = [n for n in (*(result.extra.get("notices") or []), renormalised_note(result), thin) if n]
        where = "new layer" if new else "updated"
        c = result.extra.get("channel")  # which channel `auto` chose, as the command line says
        chan = "" if c is None else "; channels averaged" if c == "mean" else f"; channel {c}"
        self.status.setText(
            f"{n} {'3D objects' if info['mode'] == '3d' else 'objects'}"
            f"{f' in {planes} planes' if planes > 1 else ''} -> '{layer.name}' ({where}); diameter "
            f"{result.diameter:.1f} px{chan}; {result.device}" + (f"; {notes[-1]}" if notes else "")
        )

    def _on_estimated(self, value: float) -> None:
        self.diameter.setValue(value)
        self.status.setText(f"estimated object diameter: {value:.1f} px")

    def _on_error(self, exc: BaseException) -> None:
        self.last_error = notify.error(exc, "Segmentation failed")
        self.status.setText(self.last_error)

    def _on_finish(self) -> None:
        self._busy(False)
        if self.runner.cancelled:
            kept = unfinished_dir(self.last_output) if self.last_output else None
            kept = f"; the finished blocks are kept in '{kept}': Run resumes" if kept and kept.exists() else ""
            self.status.setText("cancelled; layers unchanged" + kept)
        self.bar.setValue(0)
        self.finished.emit()
