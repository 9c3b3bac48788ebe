"""Segment widget: 2D and stack -> Labels layer with the image's shape, scale and dtype; replace rules."""

from __future__ import annotations

import numpy as np

from napari_unet._qt.segment_widget import SegmentWidget


def _widget(viewer, qtbot) -> SegmentWidget:
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.diameter.setValue(24.0)
    return w


def test_segment_2d_adds_labels_with_scale(viewer, qtbot, wait_idle, nuclei_image):
    viewer.add_image(nuclei_image, name="cells", scale=(0.5, 0.25), translate=(10, 20))
    w = _widget(viewer, qtbot)
    assert w.image.layer().name == "cells"
    assert w.model.spec() == "tiny"
    w.probability.setChecked(True)
    w.run()
    wait_idle(w.runner)
    assert w.last_error is None
    lab = viewer.layers["cells labels"]
    assert lab.data.shape == nuclei_image.shape
    assert lab.data.dtype == np.int32
    np.testing.assert_allclose(lab.scale, (0.5, 0.25))
    np.testing.assert_allclose(lab.translate, (10, 20))
    prob = viewer.layers["cells probability"]
    assert prob.data.dtype == np.uint8 and prob.data.shape == nuclei_image.shape
    assert "ran on cpu" in w.device.label.text()
    assert not w.link.isEnabled()  # nothing to link in a 2D image


def test_segment_stack_and_rerun_replaces_own_layer(viewer, qtbot, wait_idle, nuclei_image):
    stack = np.stack([nuclei_image, nuclei_image[::-1], nuclei_image[:, ::-1]])
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    w = _widget(viewer, qtbot)
    assert w.objects_3d.isChecked()  # a voxel size: 3D objects by default; these planes are unrelated images
    w.objects_3d.setChecked(False)
    w.run()
    wait_idle(w.runner)
    lab = viewer.layers["stack labels"]
    assert lab.data.shape == stack.shape and lab.data.dtype == np.int32
    np.testing.assert_allclose(lab.scale, (2.0, 0.5, 0.5))
    n_layers = len(viewer.layers)
    w.run(scope="current plane")
    wait_idle(w.runner)
    assert len(viewer.layers) == n_layers  # its own unedited prediction is updated in place
    assert viewer.layers["stack labels"] is lab


def test_objects_are_linked_across_planes(viewer, qtbot, wait_idle, nuclei_image):
    viewer.add_image(np.stack([nuclei_image, nuclei_image]), name="z")
    w = _widget(viewer, qtbot)
    w.model.refresh(select="bundled")  # the tiny test network finds nothing
    assert w.link.isChecked() and w.link.isEnabled()  # one id per object in a stack, by default
    w.run()
    wait_idle(w.runner)
    lab = viewer.layers["z labels"].data
    assert lab[0].max() > 0
    np.testing.assert_array_equal(lab[0], lab[1])  # identical planes: the same objects, the same ids
    w.link.setChecked(False)
    w.run()
    wait_idle(w.runner)
    lab = viewer.layers["z labels"].data
    assert not np.intersect1d(np.unique(lab[0])[1:], np.unique(lab[1])[1:]).size  # ids unique per plane


def test_rerun_never_replaces_an_edited_layer(viewer, qtbot, wait_idle, nuclei_image):
    viewer.add_image(nuclei_image, name="cells")
    w = _widget(viewer, qtbot)
    w.run()
    wait_idle(w.runner)
    lab = viewer.layers["cells labels"]
    lab.paint((64, 64), 77)  # a user stroke
    before = lab.data.copy()
    w.run()
    wait_idle(w.runner)
    assert len([la for la in viewer.layers if la.name.startswith("cells labels")]) == 2
    np.testing.assert_array_equal(viewer.layers["cells labels"].data, before)


def test_visible_region_scope_and_estimate(viewer, qtbot, wait_idle, nuclei_image):
    from napari_unet._qt.layers import make_request

    big = np.tile(nuclei_image, (2, 2))
    image = viewer.add_image(big, name="big")
    viewer.window.resize(900, 700)
    viewer.window.show()
    viewer.camera.center = (64, 80)
    viewer.camera.zoom = 6
    qtbot.wait(300)
    req = make_request(viewer, image, "visible region")
    ys, xs = req.region
    assert 0 < ys.stop - ys.start < big.shape[0] and 0 < xs.stop - xs.start < big.shape[1]
    assert req.data.shape == (ys.stop - ys.start, xs.stop - xs.start)
    w = _widget(viewer, qtbot)
    w.run(scope="visible region")
    wait_idle(w.runner)
    lab = viewer.layers["big labels"]
    assert lab.data.shape == big.shape
    outside = np.ones(big.shape, bool)
    outside[ys, xs] = False
    assert not lab.data[outside].any()  # only the visible part was segmented
    w.diameter.setValue(0)  # auto
    w.estimate()
    wait_idle(w.runner)
    assert w.diameter.value() > 0 and "estimated" in w.status.text()


def test_channels_of_an_rgb_image(viewer, qtbot, wait_idle, nuclei_image):
    rgb = np.stack([nuclei_image, nuclei_image * 0.5, nuclei_image * 0], axis=-1)
    viewer.add_image(rgb, name="rgb", rgb=True)
    w = _widget(viewer, qtbot)
    assert w.channel.isEnabled() and w.channel.count() == 5  # auto, average, 3 channels
    assert w.channel.currentData() is None and w.channel.itemData(1) == "mean"
    w.run()  # auto: the nuclear channel is the first (the second is half of it, the third empty)
    wait_idle(w.runner)
    assert "; channel 0;" in w.status.text()
    w.channel.setCurrentIndex(3)
    w.run()
    wait_idle(w.runner)
    assert viewer.layers["rgb labels"].data.shape == nuclei_image.shape and "; channel 1;" in w.status.text()
    # Retrain corrects the model on the channel it segmented, not on the colours' average
    from napari_unet._qt.retrain_data import build_request
    from napari_unet._qt.session import session_for

    labels = viewer.layers["rgb labels"]
    req = build_request(viewer.layers["rgb"], session_for(viewer).tracker(labels), trust="every pixel of the planes")
    np.testing.assert_array_equal(req.images[0], rgb[..., 1])


def test_labels_layer_carries_the_scores_as_features(viewer, qtbot, wait_idle, nuclei_image):
    viewer.add_image(np.stack([nuclei_image, nuclei_image]), name="z")
    w = _widget(viewer, qtbot)
    w.model.refresh(select="bundled")
    w.run()
    wait_idle(w.runner)
    layer = viewer.layers["z labels"]
    ids = np.unique(layer.data)[1:]
    table = layer.features
    assert ids.size >= 3 and sorted(table["index"].tolist()) == ids.tolist()
    assert ((table["score"] >= 0) & (table["score"] <= 1)).all()
    # the current plane only: its objects get fresh scores, the other plane's keep theirs
    w.scope.setCurrentText("current plane")
    w.run()
    wait_idle(w.runner)
    assert set(layer.features["index"].tolist()) >= set(np.unique(layer.data)[1:].tolist())


def _cluster_widget(viewer, qtbot, image, path) -> SegmentWidget:
    """A Segment widget set to run on a one-worker LocalCluster, on `image` saved to `path` and opened from it."""
    import tifffile

    tifffile.imwrite(path, image.astype(np.uint16))
    viewer.open(str(path), plugin="napari-unet")
    w = _widget(viewer, qtbot)
    w.cluster.setText("local:1")
    return w


def test_segment_on_a_local_dask_cluster_writes_ome_zarr_beside_the_file(
    viewer, qtbot, wait_idle, nuclei_image, tmp_path
):
    w = _cluster_widget(viewer, qtbot, np.tile(nuclei_image, (2, 2)), tmp_path / "cells.tif")
    w.run()
    wait_idle(w.runner, timeout=180_000)
    assert w.last_error is None, w.last_error
    out = tmp_path / "cells_labels.zarr"
    assert out.is_dir() and not (tmp_path / "cells_labels.zarr.part").exists()
    layer = w.last_layer
    assert layer.data.shape == (256, 320) and str(out) in w.status.text()
    here = w.last_result.n_objects
    assert here == len(np.unique(np.asarray(layer.data))) - 1


def test_cancel_stops_a_cluster_run_and_run_resumes_it(viewer, qtbot, wait_idle, nuclei_image, tmp_path):
    w = _cluster_widget(viewer, qtbot, np.tile(nuclei_image, (4, 4)), tmp_path / "big.tif")
    w.run()
    part = tmp_path / "big_labels.zarr.part"
    qtbot.waitUntil(part.exists, timeout=120_000)
    w.runner.cancel()
    wait_idle(w.runner, timeout=120_000)
    assert "kept in" in w.status.text() and not (tmp_path / "big_labels.zarr").exists()
    w.run()
    wait_idle(w.runner, timeout=180_000)
    assert w.last_error is None, w.last_error
    assert (tmp_path / "big_labels.zarr").is_dir() and not part.exists()
    assert w.last_layer.data.shape == (512, 640)


def test_rejoin_box_and_min_score_reach_the_segmentation(viewer, qtbot, wait_idle, nuclei_image, monkeypatch):
    from napari_unet import api
    from napari_unet.core.scores import MIN_SCORE

    seen, real = [], api.segment_iter

    def spy(*args, **kwargs):
        seen.append((kwargs.get("merge_cuts"), kwargs.get("min_score")))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "segment_iter", spy)
    viewer.add_image(nuclei_image, name="cells")
    w = _widget(viewer, qtbot)
    assert w.merge_cuts.isChecked() and w.min_score.value() == MIN_SCORE  # the defaults
    counts = []
    for checked, floor in ((True, MIN_SCORE), (False, 0.0)):
        w.merge_cuts.setChecked(checked)
        w.min_score.setValue(floor)
        w.run()
        wait_idle(w.runner)
        assert w.last_error is None
        counts.append(len(w.last_layer.features))
    assert seen == [(True, MIN_SCORE), (False, 0.0)]
    assert counts[1] >= counts[0]  # every object kept, none rejoined


def test_min_score_box_follows_the_chosen_model(viewer, qtbot, tiny_model):
    from dataclasses import replace

    from napari_unet.core import versions
    from napari_unet.core.scores import MIN_SCORE

    versions.save_version(tiny_model, replace(tiny_model.info, min_score=0.0), "tuned")  # as fine-tuning saves
    w = _widget(viewer, qtbot)
    assert w.model.spec() == "tiny" and w.min_score.value() == MIN_SCORE
    w.model.refresh(select="tuned")
    assert w.min_score.value() == 0.0
    w.model.setCurrentIndex(w.model.findData("tiny"))
    assert w.min_score.value() == MIN_SCORE


def test_3d_objects_from_a_zyx_stack(viewer, qtbot, wait_idle):
    from napari_unet.core.metrics import match_instances
    from napari_unet.core.synth3d import synth_nuclei_3d

    img, truth = synth_nuclei_3d((12, 96, 96), anisotropy=2, rng=1)
    viewer.add_image(img, name="zstack", scale=(1.0, 0.5, 0.5))  # Z step twice the pixel size
    w = _widget(viewer, qtbot)
    w.model.refresh(select="bundled")
    w.diameter.setValue(22.0)
    # its scale gives a voxel, so Z is spatial: 3D objects by default
    assert w.objects_3d.isEnabled() and w.objects_3d.isChecked() and w.anisotropy.value() == 2.0
    w.run(scope="current plane")
    assert w.last_error and "whole ZYX stack" in w.last_error
    w.run()
    wait_idle(w.runner)
    assert w.last_error is None, w.last_error
    lab = viewer.layers["zstack labels"]
    assert lab.data.shape == img.shape and w.last_result.extra["anisotropy"] == 2.0
    depth = [np.ptp(np.nonzero(lab.data == i)[0]) + 1 for i in np.unique(lab.data)[1:]]
    assert np.median(depth) >= 4 and match_instances(truth, lab.data).ap >= 0.85  # measured 1.0
    assert len(lab.features) == len(depth)  # every 3D object has its score
    viewer.add_image(img[0], name="plane")
    w.image.setCurrentIndex(w.image.findText("plane"))
    assert w.image.layer().name == "plane" and not w.objects_3d.isEnabled() and not w.objects_3d.isChecked()
    viewer.add_image(img, name="no voxel")  # napari's default scale of 1: plane by plane, linked
    w.image.setCurrentIndex(w.image.findText("no voxel"))
    assert w.objects_3d.isEnabled() and not w.objects_3d.isChecked() and w.link.isEnabled()


def test_a_thin_stack_falls_back_to_planes_unless_the_user_ticked_3d(viewer, qtbot, wait_idle):
    """As on the command line: 3D objects ticked by default (a voxel size) on a stack too thin for them
    segment its planes one by one and say so; ticked by the user, the widget shows the one-line refusal."""
    from napari_unet.core.synth import SynthStyle, synth_nuclei

    plane, _ = synth_nuclei((128, 128), rng=5, style=SynthStyle(diameter=(22, 22), dtype="uint16"))
    viewer.add_image(np.stack([plane] * 3), name="thin", scale=(0.3, 0.3, 0.3))  # 3 px deep: 1/7 of a nucleus
    w = _widget(viewer, qtbot)
    w.model.refresh(select="bundled")
    w.diameter.setValue(22.0)
    assert w.objects_3d.isChecked()
    w.run()
    wait_idle(w.runner)
    assert w.last_error is None, w.last_error
    lab = viewer.layers["thin labels"]
    assert all(len(np.unique(p)) > 5 for p in lab.data) and "too few planes for 3D objects" in w.status.text()
    assert len(np.unique(lab.data)) < 2 * len(np.unique(lab.data[0]))  # linked across planes, as the box says
    assert not w.objects_3d.isChecked() and "anisotropy" not in w.last_result.extra
    w.objects_3d.click()  # the user asks for 3D objects
    assert w.objects_3d.isChecked()
    w.run()
    wait_idle(w.runner)
    assert w.last_error and "under a quarter of a nucleus" in w.last_error and "untick 3D objects" in w.last_error


def test_3d_objects_on_a_local_cluster_write_a_3d_ome_zarr(viewer, qtbot, wait_idle, tmp_path):
    from napari_unet import api
    from napari_unet.core.synth3d import synth_nuclei_3d

    img, _ = synth_nuclei_3d((12, 96, 96), anisotropy=2, rng=1)
    w = _cluster_widget(viewer, qtbot, img, tmp_path / "zstack.tif")
    w.model.refresh(select="bundled")
    w.diameter.setValue(22.0)
    w.objects_3d.setChecked(True)
    w.anisotropy.setValue(2.0)
    w.run()
    wait_idle(w.runner, timeout=180_000)
    assert w.last_error is None, w.last_error
    assert (tmp_path / "zstack_labels.zarr").is_dir() and "3D objects" in w.status.text()
    here = api.segment(img.astype(np.uint16), "bundled", mode="3d", anisotropy=2.0, diameter=22.0)
    np.testing.assert_array_equal(np.asarray(w.last_layer.data[0] if w.last_layer.multiscale else w.last_layer.data),
                                  here)  # fmt: skip


def test_the_3d_box_turns_the_2d_only_options_off_and_on(viewer, qtbot):
    from napari_unet.core.synth3d import synth_nuclei_3d

    img, _ = synth_nuclei_3d((6, 48, 48), rng=0)
    viewer.add_image(img, name="zstack")
    w = _widget(viewer, qtbot)
    assert w.link.isEnabled() and w.merge_cuts.isEnabled()
    w.objects_3d.setChecked(True)
    assert not w.link.isEnabled() and not w.merge_cuts.isEnabled()
    w.objects_3d.setChecked(False)
    assert w.link.isEnabled() and w.merge_cuts.isEnabled()


def test_a_corrupt_current_pointer_is_said_not_hidden(viewer, qtbot, monkeypatch):
    """The combo falls back to "bundled", visibly, with the pointer's one-line error as a warning."""
    from napari_unet._qt import notify
    from napari_unet.core import versions

    said = []
    monkeypatch.setattr(notify, "warning", lambda message: said.append(message) or message)
    (versions.models_dir() / versions.POINTER).write_text("{trunc")
    w = _widget(viewer, qtbot)
    assert w.model.spec() == "bundled"
    assert said and "current-model pointer" in said[0] and "models revert" in said[0]


def test_an_xarray_layer_is_read_by_its_dims(viewer, qtbot, wait_idle, nuclei_image):
    """napari keeps an xarray's dims as the layer's axis labels. (t, y, x) is a time-lapse (no 3D objects);
    (c, y, x) of two channels is one image with its channels inside the layer, refused in one line as for a
    file, where before it was taken for a two-plane stack and each channel segmented as a plane."""
    import pytest

    from napari_unet._qt.layers import layer_axes

    xr = pytest.importorskip("xarray")
    tyx = viewer.add_image(xr.DataArray(np.stack([nuclei_image, nuclei_image[::-1]]), dims=("t", "y", "x")), name="tl")
    assert layer_axes(tyx) == "TYX"
    w = _widget(viewer, qtbot)
    assert not w.objects_3d.isEnabled()  # time points are not a Z axis
    w.run()
    wait_idle(w.runner)
    assert w.last_error is None and viewer.layers["tl labels"].data.shape == tyx.data.shape
    cyx = xr.DataArray(np.stack([np.zeros_like(nuclei_image), nuclei_image]), dims=("c", "y", "x"))
    viewer.add_image(cyx, name="two channels")
    assert layer_axes(viewer.layers["two channels"]) == "CYX"
    w.image.set_layer(viewer.layers["two channels"])
    w.run()
    wait_idle(w.runner)
    assert "channels inside one layer" in w.last_error and "two channels labels" not in viewer.layers
