"""Regenerate the README's screenshots (docs/*.png): each widget of the plugin in use.

    python scripts/screenshots.py [--out docs] [--seconds 30]

Needs a display (starts a virtual one with pyvirtualdisplay when there is none). Saved model versions
and autosaves go to a temporary folder, never the user's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = (1500, 950)


def wait(until, timeout: float = 600.0) -> None:
    """Process Qt events until `until()` is true."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while not until():
        if time.perf_counter() > end:
            raise TimeoutError("gave up waiting")
        QApplication.processEvents()
        time.sleep(0.01)


def settle(viewer, seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    wait(lambda: time.perf_counter() > end)


def shot(viewer, path: Path) -> None:
    settle(viewer)
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")


def new_viewer(widgets: dict):
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*SIZE)
    made = {}
    for name, cls in widgets.items():
        made[name] = cls(viewer)
        viewer.window.add_dock_widget(made[name], name=name, area="right")
    return viewer, made


def add_sample(viewer, key: str):
    from napari_unet._qt.sample_data import load_sample

    for data, kwargs, kind in load_sample(key, restore=False):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return viewer.layers[0]


def demo(out: Path) -> None:
    """The demo: 3D sample, widgets docked, first segmentation."""
    from napari_unet._qt.demo import open_demo

    viewer, widgets = open_demo("nuclei3d")
    widgets["Segment"].run()
    wait(lambda: not widgets["Segment"].runner.running)
    viewer.reset_view()
    shot(viewer, out / "demo.png")
    viewer.close()


def segment_and_correct(out: Path, seconds: float) -> None:
    """Segment (with probability), paint corrections, then retrain: three screenshots."""
    from napari_unet._qt.corrections_widget import CorrectionsWidget
    from napari_unet._qt.retrain_widget import RetrainWidget
    from napari_unet._qt.segment_widget import SegmentWidget

    viewer, w = new_viewer({"Segment": SegmentWidget})
    image = add_sample(viewer, "nuclei2d")
    seg = w["Segment"]
    seg.probability.setChecked(True)
    seg.run()
    wait(lambda: not seg.runner.running)
    viewer.layers[f"{image.name} probability"].visible = True
    viewer.layers.selection.active = viewer.layers[f"{image.name} labels"]
    viewer.reset_view()
    shot(viewer, out / "segment.png")
    viewer.layers[f"{image.name} probability"].visible = False

    corr = CorrectionsWidget(viewer)
    viewer.window.add_dock_widget(corr, name="Corrections", area="right", tabify=True)
    labels = viewer.layers[f"{image.name} labels"]
    corr.labels.set_layer(labels)
    labels.brush_size = 14
    ids, counts = np.unique(labels.data[labels.data > 0], return_counts=True)
    if len(ids) > 2:  # typical corrections: split the biggest object, delete the smallest
        for label, action in (
            (ids[np.argmax(counts)], corr.split_object),
            (ids[np.argmin(counts)], corr.delete_object),
        ):
            labels.selected_label = int(label)
            try:
                action()
            except ValueError as exc:
                print(f"skipped a correction: {exc}")
    bright = (np.asarray(image.data) > np.percentile(image.data, 98)) & (labels.data == 0)
    if bright.any():  # a missed nucleus, painted with a fresh id
        y, x = np.argwhere(bright)[len(np.argwhere(bright)) // 2]
        labels.selected_label = corr.session.tracker(labels).fresh_id()
        for dy in (-6, 0, 6):
            labels.paint((int(y) + dy, int(x)), labels.selected_label)
    viewer.reset_view()
    corr.draw_boxes()
    boxes = viewer.layers["review boxes"]
    boxes.add_rectangles(np.array([[40, 300], [40, 470], [200, 470], [200, 300]], float))
    corr.labels.set_layer(labels)
    corr.mark_boxes()
    corr._safely(corr.next_doubtful)  # the doubt queue: the object the model believes least...
    corr._safely(corr.accept_current)  # ...accepted as right (trusted), and the next one shown and selected
    viewer.camera.zoom *= 1.6
    corr.show_trusted.setChecked(True)
    viewer.layers.selection.active = labels
    labels.mode = "paint"
    shot(viewer, out / "corrections.png")
    corr.show_trusted.setChecked(False)

    ret = RetrainWidget(viewer)
    viewer.window.add_dock_widget(ret, name="Retrain", area="right", tabify=True)
    ret.labels.set_layer(labels)
    ret.seconds.setValue(seconds)
    viewer.reset_view()
    settle(viewer, 1.0)  # let the canvas redraw: the preview covers the region in view at Start
    ret.start()
    t0 = time.perf_counter()
    wait(lambda: not ret.runner.running or time.perf_counter() - t0 > 0.85 * seconds)
    shot(viewer, out / "retrain.png")  # mid-run: loss plot, held-out metric, live preview
    wait(lambda: not ret.runner.running)
    viewer.close()


def load_stack(out: Path) -> None:
    """The Load stack widget opening a folder of 2D planes as one stack."""
    import tifffile

    from napari_unet._qt.load_stack_widget import LoadStackWidget
    from napari_unet._qt.sample_data import sample_path

    folder = Path(tempfile.mkdtemp()) / "planes"
    folder.mkdir()
    for z, plane in enumerate(tifffile.imread(sample_path("nuclei3d"))):
        tifffile.imwrite(folder / f"plane_{z:02d}.tif", plane)
    viewer, w = new_viewer({"Load stack": LoadStackWidget})
    ls = w["Load stack"]
    ls.path.setText(str(folder))
    ls.pixel.setValue(0.26)
    ls.z_step.setValue(0.29)
    ls.load()
    viewer.dims.set_current_step(0, 12)
    viewer.reset_view()
    shot(viewer, out / "load_stack.png")
    viewer.close()


def big(out: Path, side: int = 4096) -> None:
    """A mosaic zarr segmented on a 2-worker dask cluster from the Segment widget, shown as multiscale labels."""
    import zarr

    from napari_unet._qt.sample_data import sample_path
    from napari_unet._qt.segment_widget import SegmentWidget
    from napari_unet.core.io import read_image

    plane = np.asarray(read_image(sample_path("nuclei2d")).data)
    mosaic = np.pad(plane, [(0, side - plane.shape[0]), (0, side - plane.shape[1])], mode="symmetric")  # mirror tiles
    path = Path(tempfile.mkdtemp()) / "mosaic.zarr"
    zarr.create_array(str(path), data=mosaic, chunks=(1024, 1024))
    viewer, w = new_viewer({"Segment": SegmentWidget})
    viewer.open(str(path), plugin="napari-unet")
    seg = w["Segment"]
    seg.cluster.setText("local:2")
    seg.run()
    wait(lambda: not seg.runner.running, timeout=1800)
    viewer.reset_view()
    shot(viewer, out / "big.png")  # the layer's "resolution: Auto (2)": napari reads a coarse level here
    viewer.close()


def objects_3d(out: Path) -> None:
    """The 3D sample segmented into 3D objects from the Segment widget, in napari's 3D view."""
    from napari_unet._qt.segment_widget import SegmentWidget

    viewer, w = new_viewer({"Segment": SegmentWidget})
    add_sample(viewer, "nuclei3d")  # scale (0.29, 0.26, 0.26) um: the widget reads anisotropy 1.12
    seg = w["Segment"]
    seg.objects_3d.setChecked(True)
    seg.run()
    wait(lambda: not seg.runner.running)
    assert seg.last_error is None, seg.last_error
    viewer.layers[0].visible = False
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = (-20, 35, 150)
    viewer.camera.zoom *= 0.9
    shot(viewer, out / "3d.png")
    viewer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"))
    p.add_argument("--seconds", type=float, default=30.0, help="retraining budget for the Retrain shot")
    p.add_argument("--only", nargs="*", default=["demo", "segment", "load_stack", "big", "3d"])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_UNET_MODELS"] = tempfile.mkdtemp(prefix="napari-unet-models-")
    os.environ["NAPARI_UNET_PROJECT"] = tempfile.mkdtemp(prefix="napari-unet-project-")
    from napari_unet._qt.demo import quiet_napari

    quiet_napari()
    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1000), color_depth=24)
        display.start()
    try:
        if "demo" in args.only:
            demo(out)
        if "segment" in args.only:
            segment_and_correct(out, args.seconds)
        if "load_stack" in args.only:
            load_stack(out)
        if "big" in args.only:
            big(out)
        if "3d" in args.only:
            objects_3d(out)
    finally:
        if display is not None:
            display.stop()


if __name__ == "__main__":
    main()
