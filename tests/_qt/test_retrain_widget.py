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
