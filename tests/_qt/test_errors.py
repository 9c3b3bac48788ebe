"""Failures become plain-words napari notifications and leave layers and models intact;
out of GPU memory falls back to smaller batches / tiles, then to the CPU, and says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet._qt.segment_widget import SegmentWidget
from napari_unet.core import jobs
from napari_unet.core.jobs import Notice, drain, segment_job


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def collect(event):
        seen.append(str(event.message) if hasattr(event, "message") else str(event))

    notification_manager.notification_ready.connect(collect)
    yield seen
    notification_manager.notification_ready.disconnect(collect)


def _drain(gen):
    """(everything yielded, the return value)."""
    yielded = []
    return yielded, drain(gen, yielded.append)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A pretend CUDA device on which segmentation runs out of memory above `limit` (tile*batch)."""
    import napari_unet.core.device as device_mod
    import napari_unet.core.segment as segment_mod

    real_select, real_iter = device_mod.select_device, segment_mod.segment_iter
    calls = []
    state = {"limit": 0}

    def select(spec="auto"):
        return torch.device("cuda") if str(spec) in ("cuda", "auto") else real_select(spec)

    def fake_iter(image, model, *, device, tile, batch_size, **kw):
        calls.append((str(device), tile, batch_size))
        # None = the engine's choice (the default first try): a 512 px tile, 4 per batch, here
        if str(device) != "cpu" and (tile or 512) * (batch_size or 4) > state["limit"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return (yield from real_iter(image, model, device="cpu", tile=tile, batch_size=batch_size, **kw))

    real_describe = device_mod.describe
    monkeypatch.setattr(device_mod, "select_device", select)
    monkeypatch.setattr(device_mod, "describe", lambda d: "cuda (pretend)" if d.type == "cuda" else real_describe(d))
    monkeypatch.setattr(segment_mod, "segment_iter", fake_iter)
    return calls, state


def test_oom_fallback_ends_on_the_cpu(fake_gpu, tiny_model, nuclei_image):
    calls, state = fake_gpu
    yielded, result = _drain(
        segment_job(nuclei_image, tiny_model, device="cuda", diameter=24.0, tile=256, batch_size=4)
    )
    notices = [y.message for y in yielded if isinstance(y, Notice)]
    assert [c[0] for c in calls] == ["cuda", "cuda", "cuda", "cuda", "cpu"]
    assert calls[1][2] == 1 and calls[2][1] < calls[1][1]  # one tile per batch, then smaller tiles
    assert "1 tile per batch" in notices[0] and "px tiles" in notices[1] and "on the CPU" in notices[-1]
    assert result.labels.shape == nuclei_image.shape and result.extra["notices"] == notices


def test_oom_fallback_stops_at_the_first_setting_that_fits(fake_gpu, tiny_model, nuclei_image):
    calls, state = fake_gpu
    state["limit"] = 200  # a 128 px tile, one per batch, fits
    _, result = _drain(segment_job(nuclei_image, tiny_model, device="cuda", diameter=24.0, tile=256, batch_size=4))
    assert calls[-1] == ("cuda", 128, 1) and len(result.extra["notices"]) == 2


def test_train_oom_falls_back_to_smaller_batches_then_cpu(monkeypatch):
    import napari_unet.core.device as device_mod
    import napari_unet.core.train as train_mod

    seen = []

    def fake_train_iter(images, labels, masks, *, device, batch, **kw):
        seen.append((device, batch))
        if device != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        yield "event"
        return "result"

    monkeypatch.setattr(device_mod, "select_device", lambda spec="auto": torch.device("cuda"))
    monkeypatch.setattr(train_mod, "train_iter", fake_train_iter)
    yielded, result = _drain(jobs.train_job([], [], None, device="cuda", batch=4))
    assert seen == [("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 4)]
    assert result == "result" and "on the CPU" in yielded[-2].message


def test_widget_says_so_when_it_falls_back(viewer, qtbot, wait_idle, fake_gpu, notes, nuclei_image):
    viewer.add_image(nuclei_image, name="cells")
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.diameter.setValue(24.0)
    w.run()
    wait_idle(w.runner)
    assert any("out of GPU memory" in n for n in notes)
    assert "cells labels" in viewer.layers and "ran on cpu" in w.device.label.text()


def test_no_image_layer(viewer, qtbot, notes):
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    assert w.run() is None
    assert "No image layer" in notes[-1] and len(viewer.layers) == 0


def test_wrong_dimensions(viewer, qtbot, notes):
    viewer.add_image(np.zeros((2, 2, 3, 16, 16), np.float32), name="5d")
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    assert w.run() is None
    assert "5 dimensions" in notes[-1] and [la.name for la in viewer.layers] == ["5d"]


def test_bad_model_file_leaves_layers_intact(viewer, qtbot, wait_idle, notes, nuclei_image, tmp_path):
    from napari_unet.core import versions

    (versions.models_dir() / "broken.safetensors").write_bytes(b"not a model")
    viewer.add_image(nuclei_image, name="cells")
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.model.addItem("broken", str(versions.models_dir() / "broken.safetensors"))
    w.model.setCurrentIndex(w.model.count() - 1)
    w.diameter.setValue(24.0)
    w.run()
    wait_idle(w.runner)
    assert "Segmentation failed" in notes[-1] and "unreadable" in notes[-1]
    assert [la.name for la in viewer.layers] == ["cells"]


def test_unavailable_device_is_explained(viewer, qtbot, wait_idle, notes, nuclei_image):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    viewer.add_image(nuclei_image, name="cells")
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.device.combo.model().item(2).setEnabled(True)  # force "cuda" on a machine without one
    w.device.combo.setCurrentIndex(2)
    w.diameter.setValue(24.0)
    w.run()
    wait_idle(w.runner)
    assert "no CUDA GPU" in notes[-1] and [la.name for la in viewer.layers] == ["cells"]
