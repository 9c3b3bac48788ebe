"""Retrain widget: a short run creates a version and changes the prediction; Stop keeps the old model; revert."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._qt.retrain_widget import RetrainWidget  # noqa: E402
from napari_unet._qt.segment_widget import SegmentWidget  # noqa: E402
from napari_unet.core import versions  # noqa: E402


@pytest.fixture
def corrected(viewer, qtbot, wait_idle, nuclei_image):
    """An image, its prediction by the tiny model, and two painted objects in that prediction."""
    image = viewer.add_image(nuclei_image, name="cells")
    seg = SegmentWidget(viewer)
    qtbot.addWidget(seg)
    seg.diameter.setValue(20.0)
    seg.run()
    wait_idle(seg.runner)
    labels = viewer.layers["cells labels"]
    labels.brush_size = 16
    for k, (y, x) in enumerate([(30, 30), (30, 90), (90, 50)], start=1):
        labels.paint((y, x), 100 + k)
    labels.paint((60, 60), 0)  # background
    return image, labels, seg


def _retrain(viewer, qtbot, seconds: float) -> RetrainWidget:
    w = RetrainWidget(viewer)
    qtbot.addWidget(w)
    w.seconds.setValue(seconds)
    w.preview.setChecked(True)
    return w


def test_short_retrain_creates_version_and_changes_prediction(viewer, qtbot, wait_idle, corrected):
    image, labels, seg = corrected
    painted = labels.data.copy()
    w = _retrain(viewer, qtbot, 8)
    assert w.labels.layer() is labels and w.image.layer() is image
    before = [v.name for v in versions.list_versions()]
    w.start()
    assert w.runner.running
    wait_idle(w.runner, timeout=180_000)
    assert w.last_error is None, w.last_error
    result = w.last_result
    assert result is not None and result.path is not None and result.path.exists()
    assert [v.name for v in versions.list_versions()] == before + [result.name]
    assert versions.current_name() == result.name
    assert seg.model.spec() == result.name  # the new version is selected in the Segment widget
    assert w.plot.loss  # the loss plot received events
    assert w.previews > 0  # the live preview was shown (and removed once the run ended)
    assert not any(la.name == "cells preview" for la in viewer.layers)
    # re-segmented with the new model, painted pixels kept as painted
    trusted = w.session.tracker(labels).trusted
    np.testing.assert_array_equal(labels.data[trusted], painted[trusted])
    assert labels.metadata["napari_unet"]["model"] == result.name
    # the new model's prediction differs from the old one's
    old = seg.last_result.probabilities if seg.last_result.probabilities is not None else None
    seg.probability.setChecked(True)
    seg.run()
    wait_idle(seg.runner)
    new_probs = viewer.layers["cells probability"].data.copy()
    seg.model.refresh(select="tiny")
    seg.run()
    wait_idle(seg.runner)
    assert old is None or old.shape == new_probs.shape
    assert not np.array_equal(viewer.layers["cells probability"].data, new_probs)


def test_stop_mid_run_keeps_the_old_model(viewer, qtbot, wait_idle, corrected):
    _, labels, _ = corrected
    before_labels = labels.data.copy()
    w = _retrain(viewer, qtbot, 60)
    w.start()
    qtbot.waitUntil(lambda: len(w.plot.loss) >= 2, timeout=120_000)
    w.stop()
    wait_idle(w.runner, timeout=60_000)
    assert w.last_result is None
    assert versions.list_versions()[-1].name == "tiny"  # nothing saved
    assert versions.current_name() == "tiny"
    np.testing.assert_array_equal(labels.data, before_labels)
    assert "nothing was saved" in w.status.text()


def test_revert_to_an_earlier_version(viewer, qtbot, tiny_model):
    versions.save_version(tiny_model, tiny_model.info, "later")
    versions.set_current("later")
    w = _retrain(viewer, qtbot, 5)
    seg = SegmentWidget(viewer)
    qtbot.addWidget(seg)
    w.versions.refresh(select="tiny")
    w.use_version()
    assert versions.current_name() == "tiny"
    assert seg.model.spec() == "tiny"
    w.use_version("bundled")
    assert versions.current_name() is None


def test_nothing_painted_is_a_plain_error(viewer, qtbot, nuclei_image):
    viewer.add_image(nuclei_image, name="cells")
    viewer.add_labels(np.zeros(nuclei_image.shape, np.int32), name="empty")
    w = _retrain(viewer, qtbot, 5)
    assert w.start() is None
    assert "nothing painted" in w.last_error
    viewer.add_labels(np.zeros((10, 10), np.int32), name="small")
    w.labels.set_layer(viewer.layers["small"])
    w.image.set_layer(viewer.layers["cells"])
    assert w.start() is None
    assert "choose matching layers" in w.last_error


def test_stop_takes_effect_at_once_and_nothing_late_is_drawn(viewer, qtbot, wait_idle, corrected, monkeypatch):
    """Stop, as the user sees it (status, preview gone, buttons), within 0.5 s of the click, in a real run.

    The click comes during a step that takes 2 s (as a big model's does on the CPU): the engine can
    only stop at its next yield, but the widget must not wait for it.
    """
    import threading
    import time

    import torch
    from qtpy.QtCore import Qt

    slow, zero_grad = threading.Event(), torch.optim.Optimizer.zero_grad

    def slow_zero_grad(self, *args, **kwargs):
        if slow.is_set():
            time.sleep(2.0)
        return zero_grad(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad", slow_zero_grad)
    w = _retrain(viewer, qtbot, 60)
    w.start()
    qtbot.waitUntil(lambda: w.previews >= 1 and len(w.plot.loss) >= 2, timeout=120_000)
    assert any(la.name == "cells preview" for la in viewer.layers)
    slow.set()
    qtbot.wait(100)  # the worker is in a slow step now
    t0 = time.perf_counter()
    qtbot.mouseClick(w.stop_btn, Qt.LeftButton)

    def settled() -> None:
        assert w.status.text() == "stopped: nothing was saved and the model in use is unchanged"
        assert not any(la.name == "cells preview" and la.visible for la in viewer.layers)
        assert not w.stop_btn.isEnabled()
        if w.runner.running:  # winding down: Start waits for the worker, and says so
            assert not w.start_btn.isEnabled() and w.start_btn.text() == "stopping…"

    qtbot.waitUntil(settled, timeout=10_000)
    latency = time.perf_counter() - t0
    shown, steps = w.status.text(), len(w.plot.loss)
    qtbot.waitUntil(lambda: not any(la.name == "cells preview" for la in viewer.layers), timeout=5_000)
    removed = time.perf_counter() - t0
    if w.runner.running:
        assert w.start() is None  # starting again while the worker winds down does nothing
    wait_idle(w.runner, timeout=60_000)
    wind_down = time.perf_counter() - t0
    print(
        f"Stop: status/preview right after {1000 * latency:.0f} ms, preview layer removed after "
        f"{1000 * removed:.0f} ms, worker ended after {1000 * wind_down:.0f} ms"
    )
    assert latency < 0.5
    assert w.status.text() == shown and len(w.plot.loss) == steps  # late events drew nothing
    assert not any(la.name == "cells preview" for la in viewer.layers)
    assert w.start_btn.isEnabled() and w.start_btn.text() == "Start" and not w.stop_btn.isEnabled()
    assert versions.current_name() == "tiny" and w.last_result is None
    slow.clear()
    w.seconds.setValue(2)
    w.resegment.setChecked(False)
    assert w.start() is not None  # starting again after the wind-down works
    wait_idle(w.runner, timeout=120_000)
    assert w.last_error is None, w.last_error
    assert w.last_result is not None and versions.current_name() == w.last_result.name


def _fake_training(monkeypatch, events, result, gate=None):
    """Replace training by a generator that yields `events`, waits for `gate`, then returns `result`."""
    from napari_unet import api

    def job(*args, **kwargs):
        yield from events
        if gate is not None:
            gate.wait(30)
        return result

    monkeypatch.setattr(api, "train", job)


def _painted(viewer, qtbot, nuclei_image) -> RetrainWidget:
    """A Retrain widget (5 s budget, no re-segmenting) for an image with one painted object."""
    viewer.add_image(nuclei_image, name="cells")
    labels = viewer.add_labels(np.zeros(nuclei_image.shape, np.int32), name="cells labels")
    w = _retrain(viewer, qtbot, 5)
    w.resegment.setChecked(False)
    labels.brush_size = 14
    labels.paint((30, 30), 1)
    labels.paint((60, 60), 0)
    return w


def test_stop_after_the_run_saved_says_so(viewer, qtbot, wait_idle, monkeypatch, nuclei_image, tiny_model):
    """A Stop that comes while the engine is already saving cannot undo it: the widget must not claim it did."""
    import math
    import threading

    from napari_unet.core.train import TrainEvent, TrainResult

    path = versions.save_version(tiny_model, tiny_model.info, "saved-late")
    versions.set_current("saved-late")
    gate = threading.Event()
    step = TrainEvent(1, None, 0.5, 1e-3, 2.0, 4.0, 0.5)
    result = TrainResult(tiny_model, path, "saved-late", {"steps": 1})
    first = TrainEvent(0, None, math.nan, 0, 0, 5.0, 0.0, message="preparing")
    _fake_training(monkeypatch, [first, step], result, gate)
    w = _painted(viewer, qtbot, nuclei_image)
    w.start()
    qtbot.waitUntil(lambda: len(w.plot.loss) == 1, timeout=10_000)
    w.stop()
    gate.set()  # the engine was past its last yield: it returns its saved result
    wait_idle(w.runner)
    assert "nothing was saved" not in w.status.text()
    assert "'saved-late'" in w.status.text() and "saved" in w.status.text()
    assert w.last_result is result
    assert w.versions.spec() == "saved-late"


def test_validation_on_training_pixels_is_not_called_held_out(
    viewer, qtbot, wait_idle, monkeypatch, nuclei_image, tiny_model
):
    import math

    from napari_unet.core.train import TrainEvent, TrainResult

    note = "training on cpu (1 threads); too few trusted pixels to hold some out: validating on the training pixels"
    events = [
        TrainEvent(0, None, math.nan, 0, 0, 5.0, 0.0, message="preparing 1 image(s)"),
        TrainEvent(0, None, math.nan, 0, 0, 5.0, 0.1, val_metric=0.61, message=note),
    ]
    metrics = {
        "val_metric": "balanced pixel accuracy (background/interior/boundary) on the training pixels (too few to hold out)",
        "val_before": 0.61,
        "val_after": 0.72,
        "steps": 3,
        "improved": True,
    }
    path = versions.save_version(tiny_model, tiny_model.info, "small-run")
    _fake_training(monkeypatch, events, TrainResult(tiny_model, path, "small-run", metrics))
    w = _painted(viewer, qtbot, nuclei_image)
    w.start()
    wait_idle(w.runner)
    assert w.last_error is None, w.last_error
    text = w.plot.texts()
    assert text["metric"] == "● on training pixels 0.610" and "held-out" not in w.status.text()
    assert "on training pixels 0.610 -> 0.720" in w.status.text()
    assert text["loss"] == "● training loss" and text["loss_top"] == text["loss_bottom"] == ""  # no step yet
    w.plot.add(1, 0.5, 0.5)
    assert w.plot.texts()["loss"] == "● training loss 0.500" and w.plot.texts()["loss_top"]


def test_status_shows_no_loss_before_the_first_step(viewer, qtbot, wait_idle, monkeypatch, nuclei_image, tiny_model):
    import math

    from napari_unet.core.train import TrainEvent, TrainResult

    events = [TrainEvent(0, None, math.nan, 0, 0, 5.0, 0.0), TrainEvent(1, None, math.nan, 0, 2.0, 4.0, 0.5)]
    _fake_training(monkeypatch, events, TrainResult(tiny_model, None, "x", {}))
    w = _painted(viewer, qtbot, nuclei_image)
    texts: list[str] = []
    orig = w.status.setText
    monkeypatch.setattr(w.status, "setText", lambda t: (texts.append(t), orig(t)))
    w.start()
    wait_idle(w.runner)
    assert w.last_error is None, w.last_error
    assert "step 1, 2.0 steps/s, 4 s left" in texts and not any("nan" in t for t in texts), texts


def test_export_button_exports_the_chosen_version(viewer, qtbot, tmp_path, wait_idle):
    import torch

    from napari_unet._qt.retrain_widget import RetrainWidget

    w = RetrainWidget(viewer)
    w.versions.refresh(select="tiny")
    out = tmp_path / "tiny.pt"
    worker = w.export_version(path=str(out))
    assert worker is not None
    wait_idle(w.exporter)
    assert out.exists() and "exported to" in w.status.text() and w.export_btn.isEnabled()
    assert torch.jit.load(str(out))(torch.rand(1, 1, 64, 64)).shape == (1, 3, 64, 64)
    # the same again: an existing file is never replaced silently
    w.export_version(path=str(out))
    wait_idle(w.exporter)
    assert "exists" in w.status.text() and w.export_btn.isEnabled()


def test_3d_segment_paint_in_3d_and_retrain(viewer, qtbot, wait_idle):
    # A ZYX stack into 3D objects, a ball painted with napari's 3D brush (n_edit_dim 3), then a retrain
    # round: its XZ and YZ slices are training data next to the XY planes, and the painting is kept.
    from napari_unet.core.synth3d import synth_nuclei_3d

    img, _ = synth_nuclei_3d((8, 64, 64), anisotropy=2, rng=2)
    viewer.add_image(img, name="z", scale=(2.0, 1.0, 1.0))
    seg = SegmentWidget(viewer)
    qtbot.addWidget(seg)
    seg.diameter.setValue(20.0)
    seg.objects_3d.setChecked(True)
    seg.run()
    wait_idle(seg.runner)
    assert seg.last_error is None, seg.last_error
    labels = viewer.layers["z labels"]
    labels.n_edit_dimensions = 3
    labels.brush_size = 12
    labels.paint((4, 32, 32), 77)
    painted = labels.data == 77
    assert len(np.unique(np.nonzero(painted)[0])) > 1  # a ball across planes, not a disc
    w = _retrain(viewer, qtbot, 4)
    w.start()
    assert "XZ/YZ slices" in w.status.text(), w.status.text()
    side = w._request.extra["side_views"]
    assert {v for v, _ in side} == {"xz", "yz"}
    assert all(im.shape[0] == 16 for im in w._request.images[-len(side) :])  # Z stretched to cubic voxels
    wait_idle(w.runner, timeout=180_000)
    assert w.last_error is None, w.last_error
    assert w.last_result is not None and (labels.data[painted] == 77).all()
    assert labels.metadata["napari_unet"]["model"] == w.last_result.name  # re-segmented, in 3D again
    assert labels.metadata["napari_unet"]["mode"] == "3d"
