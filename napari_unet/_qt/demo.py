"""`napari-unet demo`: napari with the sample stack, the widgets docked and a first segmentation shown."""

from __future__ import annotations

import sys
from pathlib import Path

WIDGETS = ("Segment", "Corrections", "Retrain")


def quiet_napari() -> None:
    """For unattended screenshots: a throwaway napari config (the user's stays untouched) that shows
    only error toasts, so start-up notices do not cover the canvas. Call before importing napari."""
    import os
    import tempfile

    os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="napari-unet-cfg-"), "s.yaml"))
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"


def open_demo(sample: str = "nuclei3d"):
    """A viewer with a sample, the plugin's widgets docked; returns (viewer, {name: widget})."""
    import napari

    from .corrections_widget import CorrectionsWidget
    from .retrain_widget import RetrainWidget
    from .sample_data import load_sample
    from .segment_widget import SegmentWidget

    viewer = napari.Viewer(title="napari-unet demo")
    for data, kwargs, kind in load_sample(sample):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    image = viewer.layers[0]
    if image.ndim > 2:
        viewer.dims.set_current_step(0, image.data.shape[0] // 2)
    widgets = {
        "Segment": SegmentWidget(viewer),
        "Corrections": CorrectionsWidget(viewer),
        "Retrain": RetrainWidget(viewer),
    }
    docks = {
        name: viewer.window.add_dock_widget(w, name=name, area="right", tabify=name == "Retrain")
        for name, w in widgets.items()
    }
    viewer.layers.selection.active = image
    viewer.window.resize(1500, 950)
    # Segment, the first action, gets the height it asks for; Corrections / Retrain (tabbed) the rest.
    from qtpy.QtCore import Qt

    from .controls import VerticalScroll

    window = docks["Segment"].parentWidget()
    want = widgets["Segment"].findChild(VerticalScroll).widget().sizeHint().height() + 40  # + the title bar
    window.resizeDocks([docks["Segment"], docks["Retrain"]], [want, max(200, 950 - want)], Qt.Vertical)
    viewer.reset_view()
    return viewer, widgets


def run_demo(screenshot: str | None = None, sample: str = "nuclei3d", timeout_s: float = 600.0) -> int:
    """Open the demo and segment the sample; with `screenshot`, save the window there and exit.

    Returns:
        A process exit status (0 = fine).
    """
    if screenshot:
        quiet_napari()
    import napari
    from qtpy.QtCore import QTimer

    viewer, widgets = open_demo(sample)
    seg = widgets["Segment"]
    outcome = {"rc": 0}

    def finish() -> None:
        if seg.last_error:
            print(f"napari-unet demo: {seg.last_error}", file=sys.stderr)
            outcome["rc"] = 1
        if screenshot:
            path = Path(screenshot)
            path.parent.mkdir(parents=True, exist_ok=True)
            viewer.reset_view()
            QTimer.singleShot(300, lambda: _save_and_close(viewer, path))

    def give_up() -> None:
        print(f"napari-unet demo: no segmentation after {timeout_s:.0f} s", file=sys.stderr)
        outcome["rc"] = 1
        viewer.close()

    seg.finished.connect(finish)
    QTimer.singleShot(100, lambda: seg.run() or finish())
    if screenshot:
        QTimer.singleShot(int(timeout_s * 1000), give_up)
    napari.run()
    return outcome["rc"]


def _save_and_close(viewer, path: Path) -> None:
    viewer.screenshot(str(path), canvas_only=False)
    print(f"screenshot saved to {path}")
    viewer.close()
