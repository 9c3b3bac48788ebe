"""Paint events -> trusted mask; review marks; editing helpers; autosave and restore."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_unet._qt.corrections_widget import CorrectionsWidget
from napari_unet._qt.session import session_for


def _discs(shape=(64, 96)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    lab[(yy - 32) ** 2 + (xx - 30) ** 2 <= 12**2] = 1
    lab[((yy - 32) ** 2 + (xx - 53) ** 2 <= 12**2) & (lab == 0)] = 1  # two touching discs, one id
    lab[(yy - 10) ** 2 + (xx - 85) ** 2 <= 6**2] = 2
    return lab


def test_paint_events_make_the_trusted_mask(viewer):
    labels = viewer.add_labels(np.zeros((3, 64, 96), np.int32), name="lab")
    tracker = session_for(viewer).tracker(labels)
    assert tracker.n_trusted == 0 and not tracker.edited
    before = labels.data.copy()
    labels.brush_size = 7
    labels.paint((1, 20, 20), 5)
    labels.fill((1, 50, 80), 3)  # fills the whole background of plane 1
    changed = labels.data != before
    np.testing.assert_array_equal(tracker.trusted, changed)
    assert tracker.edited
    assert tracker.trusted_planes() == [(1,)]
    labels.data_setitem((np.array([2]), np.array([3]), np.array([4])), 9)
    assert tracker.trusted[2, 3, 4] and tracker.trusted_planes() == [(1,), (2,)]


def test_review_marks(viewer):
    labels = viewer.add_labels(np.zeros((3, 64, 96), np.int32), name="lab")
    w = CorrectionsWidget(viewer)
    w.labels.set_layer(labels)
    viewer.dims.set_current_step(0, 2)
    w.mark_plane()
    t = w.session.tracker(labels)
    assert t.trusted[2].all() and not t.trusted[:2].any()
    viewer.dims.set_current_step(0, 0)
    w.mark_view()
    assert t.trusted[0].any()
    boxes_msg = w.draw_boxes()
    assert "draw rectangles" in boxes_msg
    boxes = viewer.layers["review boxes"]
    boxes.add_rectangles(np.array([[0, 10, 10], [0, 10, 30], [0, 20, 30], [0, 20, 10]], float))
    w.labels.set_layer(labels)
    t.clear()
    w.mark_boxes()
    assert t.trusted[0, 10:21, 10:31].all() and t.n_trusted == 11 * 21
    assert len(boxes.data) == 0


def test_helpers_fresh_id_delete_merge_split_and_undo(viewer):
    labels = viewer.add_labels(_discs(), name="lab")
    w = CorrectionsWidget(viewer)
    w.labels.set_layer(labels)
    t = w.session.tracker(labels)
    w.new_object()
    assert labels.selected_label == 3 and labels.mode == "paint"
    labels.selected_label = 1
    ids = t.split(1, ())
    assert len(ids) == 2 and set(np.unique(labels.data)) == {0, 2, *ids}
    sizes = [int((labels.data == i).sum()) for i in ids]
    assert min(sizes) > 300  # split at the neck, not a sliver
    w.merge_ids.setText(f"{ids[0]} {ids[1]}")
    w.merge_objects()
    assert set(np.unique(labels.data)) == {0, 2, ids[0]}
    labels.selected_label = 2
    w.delete_object()
    assert 2 not in labels.data
    labels.undo()
    assert 2 in labels.data  # helpers go through napari's undo history
    assert t.n_trusted > 0  # and they count as corrections


def test_autosave_next_to_the_image_and_restore_on_reopen(make_napari_viewer, tiny_current, project, tmp_path, qtbot):
    img = (np.random.default_rng(0).random((64, 96)) * 1000).astype(np.uint16)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, img)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-unet")
    session = session_for(viewer)
    labels = viewer.add_labels(_discs(), name="cells labels")
    labels.paint((40, 80), 7)
    session.flush()
    saved = tmp_path / "cells.cells_labels.corrections.npz"
    assert saved.exists()
    trusted = session.tracker(labels).trusted.copy()
    viewer.layers.clear()
    viewer.open(str(path), plugin="napari-unet")  # the reader brings the corrections back
    qtbot.wait(50)
    restored = viewer.layers["cells labels"]
    assert (restored.data == 7).any()
    np.testing.assert_array_equal(session.tracker(restored).trusted, trusted)
    assert len([la for la in viewer.layers if la.name.startswith("cells labels")]) == 1


def test_autosave_without_a_file_goes_to_the_project_folder(viewer, project, qtbot):
    from napari_unet._qt.sample_data import nuclei_2d

    session = session_for(viewer)  # widgets create it when docked; paints are recorded from then on
    for data, kwargs, kind in nuclei_2d():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    image = viewer.layers[0]
    labels = viewer.add_labels(np.zeros(image.data.shape, np.int32), name="mine")
    labels.paint((100, 100), 4)
    session.flush()
    assert list(project.glob("sample-nuclei2d.mine.corrections.npz"))
    viewer.layers.clear()
    for data, kwargs, kind in nuclei_2d():  # reopening the sample restores them
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    qtbot.wait(50)
    assert "mine" in viewer.layers and (viewer.layers["mine"].data == 4).any()
