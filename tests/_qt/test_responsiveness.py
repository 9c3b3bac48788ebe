"""The viewer stays responsive while the Retrain widget trains: the main thread keeps ticking.

The figure against the target (p99 stall <= 50 ms) comes from benchmarks/gui_responsiveness.py
(a longer side-by-side run with a user panning the canvas; table in benchmarks/RESULTS.md). Here
the bound is loose on purpose, so a busy CI machine does not fail it: training on the main thread
would stall it for whole seconds.
"""

from __future__ import annotations

import time

import numpy as np

from napari_unet._qt.retrain_widget import RetrainWidget  # noqa: E402


def test_main_thread_stalls_while_training(viewer, qtbot, nuclei_image):
    from qtpy.QtCore import QTimer

    viewer.add_image(nuclei_image, name="cells")
    labels = viewer.add_labels(np.zeros(nuclei_image.shape, np.int32), name="cells labels")
    w = RetrainWidget(viewer)
    qtbot.addWidget(w)
    labels.brush_size = 14
    for k, (y, x) in enumerate([(30, 30), (30, 90), (90, 50), (95, 120)], start=1):
        labels.paint((y, x), k)
    w.labels.set_layer(labels)
    w.image.set_layer(viewer.layers["cells"])
    w.seconds.setValue(6)
    ticks: list[float] = []
    timer = QTimer(interval=10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    assert w.start() is not None
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    timer.stop()
    assert w.last_error is None, w.last_error
    stalls = np.clip(np.diff(ticks) * 1000 - 10, 0, None)
    assert len(stalls) > 200
    p99 = float(np.percentile(stalls, 99))
    print(
        f"main-thread stall while training: p50 {np.median(stalls):.1f} ms, p99 {p99:.1f} ms, max {stalls.max():.1f} ms"
    )
    assert p99 <= 250.0 and stalls.max() < 2000.0


def test_segmenting_while_training_does_not_wait(viewer, qtbot, wait_idle, nuclei_image):
    from napari_unet._qt.segment_widget import SegmentWidget

    viewer.add_image(nuclei_image, name="cells")
    ret = RetrainWidget(viewer)
    seg = SegmentWidget(viewer)
    qtbot.addWidget(ret)
    qtbot.addWidget(seg)
    labels = viewer.add_labels(np.zeros(nuclei_image.shape, np.int32), name="mine")
    labels.brush_size = 14
    labels.paint((30, 30), 1)
    ret.labels.set_layer(labels)
    ret.seconds.setValue(30)
    ret.start()
    qtbot.waitUntil(lambda: len(ret.plot.loss) >= 1, timeout=60_000)
    seg.diameter.setValue(24)
    seg.run()
    wait_idle(seg.runner)  # finishes while the 30 s training is still running
    assert ret.runner.running and "cells labels" in viewer.layers
    ret.stop()
    wait_idle(ret.runner)
