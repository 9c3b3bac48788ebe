"""The doubt queue of the Corrections widget: lowest confidence first, accept = trusted, on stacks too."""

from __future__ import annotations

import numpy as np


def _segmented_stack(viewer, qtbot, wait_idle, nuclei_image):
    from napari_unet._qt.segment_widget import SegmentWidget

    viewer.add_image(np.stack([nuclei_image, nuclei_image[::-1]]), name="z")
    seg = SegmentWidget(viewer)
    qtbot.addWidget(seg)
    seg.model.refresh(select="bundled")  # the tiny test network finds nothing
    seg.run()
    wait_idle(seg.runner)
    return viewer.layers["z labels"]


def test_queue_walks_objects_by_confidence_and_accept_trusts_them(viewer, qtbot, wait_idle, nuclei_image):
    from napari_unet._qt.corrections_widget import ACCEPT_KEY, NEXT_KEY, CorrectionsWidget

    layer = _segmented_stack(viewer, qtbot, wait_idle, nuclei_image)
    w = CorrectionsWidget(viewer)
    qtbot.addWidget(w)
    w.labels.set_layer(layer)
    table = layer.features.sort_values("score", kind="stable")
    order = table["index"].tolist()
    assert len(order) >= 4

    w._safely(w.next_doubtful)
    first = order[0]
    assert w.current == first and layer.selected_label == first
    z = int(viewer.dims.current_step[0])
    assert (np.asarray(layer.data[z]) == first).any()  # the view shows the plane holding it
    assert "confidence" in w.status.text() and "0 of" in w.queue_status.text()

    tracker = w.session.tracker(layer)
    before = tracker.n_trusted
    w._safely(w.accept_current)
    obj = np.asarray(layer.data) == first
    assert tracker.trusted[obj].all() and tracker.n_trusted > before + obj.sum() - 1  # object + its outline
    assert w.current == order[1] and "1 of" in w.queue_status.text()
    w._safely(w.next_doubtful)  # skipping counts as reviewed, without trusting it
    assert w.current == order[2] and "2 of" in w.queue_status.text()
    assert not tracker.trusted[np.asarray(layer.data) == order[1]].all()
    # the keyboard: Shift-A accepts the shown object and moves on, Shift-N moves on
    from napari.utils.key_bindings import coerce_keybinding

    layer.keymap[coerce_keybinding(ACCEPT_KEY)](layer)
    assert tracker.trusted[np.asarray(layer.data) == order[2]].all() and w.current == order[3]
    layer.keymap[coerce_keybinding(NEXT_KEY)](layer)
    assert w.current == order[4] if len(order) > 4 else w.current is None


def test_queue_without_scores_says_what_to_do(viewer, qtbot):
    from napari_unet._qt.corrections_widget import CorrectionsWidget

    layer = viewer.add_labels(np.zeros((32, 32), np.int32), name="hand")
    w = CorrectionsWidget(viewer)
    qtbot.addWidget(w)
    w.labels.set_layer(layer)
    w._safely(w.next_doubtful)
    assert "no confidence scores" in w.status.text()
