"""The widgets as napari docks them: from the Plugins menu, given napari's public proxy of the viewer."""

from __future__ import annotations

import threading
import warnings

from napari.utils._proxies import PublicOnlyProxy
from qtpy.QtCore import QThreadPool
from qtpy.QtWidgets import QApplication, QScrollArea

from napari_unet._qt.corrections_widget import CorrectionsWidget
from napari_unet._qt.retrain_widget import RetrainWidget
from napari_unet._qt.segment_widget import SegmentWidget

DOCKED = ("Segment", "Corrections", "Retrain")


def _dock_all(viewer) -> dict:
    widgets = {name: viewer.window.add_plugin_dock_widget("napari-unet", name)[1] for name in DOCKED}
    QApplication.processEvents()
    return widgets


def test_three_docked_widgets_fit_a_1366x768_screen(viewer):
    widgets = _dock_all(viewer)
    window = widgets["Segment"].window()
    hint = window.minimumSizeHint()
    print(f"main window minimum size with {', '.join(DOCKED)} docked: {hint.width()} x {hint.height()}")
    assert hint.height() <= 768 and hint.width() <= 1366
    assert window.minimumHeight() <= 768 and window.minimumWidth() <= 1366
    window.showNormal()
    window.resize(1366, 768)
    QApplication.processEvents()
    assert window.height() <= 768 and window.width() <= 1366
    for w in widgets.values():  # scrolled, not squashed: the content keeps its natural height
        content = w.findChild(QScrollArea).widget()
        assert content.height() >= content.minimumSizeHint().height()


def test_docked_widgets_keep_the_proxy_and_share_one_session(viewer, make_napari_viewer):
    widgets = _dock_all(viewer)
    assert all(isinstance(w.viewer, PublicOnlyProxy) for w in widgets.values())
    sessions = {id(w.session) for w in widgets.values()}
    assert len(sessions) == 1
    other = make_napari_viewer()
    _, seg2 = other.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert seg2.session is not widgets["Segment"].session


def test_widgets_work_through_the_proxy(
    make_napari_viewer_proxy, tiny_current, project, qtbot, wait_idle, nuclei_image
):
    proxy = make_napari_viewer_proxy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg, cor, ret = SegmentWidget(proxy), CorrectionsWidget(proxy), RetrainWidget(proxy)
        for w in (seg, cor, ret):
            qtbot.addWidget(w)
        assert seg.session is cor.session is ret.session
        proxy.add_image(nuclei_image, name="cells")
        proxy.add_image(nuclei_image[::-1].copy(), name="other")  # now the active image
        assert ret.image.layer().name == "other"
        seg.diameter.setValue(20.0)
        seg.image.set_layer(proxy.layers["cells"])
        assert seg.image.layer().name == "cells"
        seg.run()
        wait_idle(seg.runner)
        assert seg.last_error is None, seg.last_error
        labels = proxy.layers["cells labels"]
        assert ret.labels.layer().name == "cells labels"
        assert ret.image.layer().name == "cells"  # the image the labels belong to, found through the proxy
        cor.labels.set_layer(labels)
        assert cor.labels.layer().name == "cells labels"
        labels.paint((30, 30), 7)
        assert cor.session.tracker(cor.labels.layer()).trusted.any()
    private = [str(w.message) for w in caught if "Private attribute access" in str(w.message)]
    assert not private, private


def test_jobs_start_at_once_without_resizing_qt_global_pool(qtbot):
    """More jobs at once than Qt's global pool has threads: they all run, and that pool is left alone.

    (Qt's global pool is the process's: Qt itself converts images in it, so filling it stalls the GUI.)
    """
    from napari_unet._qt.runner import JobRunner

    pool = QThreadPool.globalInstance()
    size, busy = pool.maxThreadCount(), pool.activeThreadCount()
    release, entered = threading.Event(), []

    def job():
        entered.append(pool.activeThreadCount())
        release.wait(20)
        yield 0.5
        return 1

    runners = [JobRunner() for _ in range(size + 1)]
    try:
        for r in runners:
            r.start(job(), "waiting")
        qtbot.waitUntil(lambda: len(entered) == len(runners), timeout=10_000)
        assert pool.maxThreadCount() == size
        assert pool.activeThreadCount() == busy and set(entered) == {busy}
    finally:
        release.set()
    qtbot.waitUntil(lambda: not any(r.running for r in runners), timeout=10_000)
    assert pool.maxThreadCount() == size
