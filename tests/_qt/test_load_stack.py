"""Load stack widget: a folder as one stack, explicit axes, one channel, pixel size."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_unet._qt.load_stack_widget import LoadStackWidget


def test_folder_as_time_series_with_pixel_size(viewer, qtbot, tmp_path):
    for t in range(3):
        tifffile.imwrite(tmp_path / f"t{t}.tif", np.full((16, 20), t, np.uint8))
    w = LoadStackWidget(viewer)
    qtbot.addWidget(w)
    w.path.setText(str(tmp_path))
    w.folder_axis.setCurrentText("T")
    w.pixel.setValue(0.5)
    (layer,) = w.load()
    assert layer.data.shape == (3, 16, 20)
    np.testing.assert_allclose(layer.scale, (1.0, 0.5, 0.5))
    assert layer.metadata["napari_unet"]["axes"] == "TYX"


def test_explicit_axes_and_one_channel(viewer, qtbot, tmp_path):
    data = np.zeros((2, 5, 16, 20), np.uint16)  # CZYX, written without axes metadata
    data[1] = 9
    tifffile.imwrite(tmp_path / "x.tif", data)
    w = LoadStackWidget(viewer)
    qtbot.addWidget(w)
    w.path.setText(str(tmp_path / "x.tif"))
    w.axes.setCurrentText("CZYX")
    w.channel.setCurrentIndex(2)  # channel 1 only
    w.z_step.setValue(2.0)
    (layer,) = w.load()
    assert layer.data.shape == (5, 16, 20) and int(np.asarray(layer.data).max()) == 9
    np.testing.assert_allclose(layer.scale, (2.0, 1.0, 1.0))


def test_bad_input_is_a_plain_error(viewer, qtbot, tmp_path):
    w = LoadStackWidget(viewer)
    qtbot.addWidget(w)
    w.path.setText(str(tmp_path / "missing.tif"))
    assert w.load() == []
    assert "does not exist" in w.status.text()
    tifffile.imwrite(tmp_path / "y.tif", np.zeros((16, 20), np.uint8))
    w.path.setText(str(tmp_path / "y.tif"))
    w.axes.setCurrentText("ZYX")
    assert w.load() == [] and "letters" in w.status.text()
