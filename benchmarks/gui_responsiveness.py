"""How responsive napari stays while the plugin retrains in the background.

A probe timer on the main thread asks to run every 10 ms; how late each tick comes is the main
thread's stall. A second timer plays a user panning and zooming (so the canvas redraws) while the
Retrain widget fine-tunes the bundled model on painted corrections of the 2D sample. The same
interaction without training runs first, side by side, on the same machine.

Run (needs a display; starts a virtual one with pyvirtualdisplay when there is none):

    python benchmarks/gui_responsiveness.py [--seconds 60] [--write]

``--write`` replaces the "## GUI responsiveness" section of benchmarks/RESULTS.md with the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

PROBE_MS = 10
INTERACT_MS = 100


def stall_stats(ticks: list[float], interval_ms: float = PROBE_MS) -> dict:
    """Lateness of each tick (ms beyond the interval) -> p50, p95, p99, max, count."""
    gaps = np.diff(np.asarray(ticks)) * 1000 - interval_ms
    gaps = np.clip(gaps, 0, None)
    if gaps.size == 0:
        return {"n": 0, "p50": np.nan, "p95": np.nan, "p99": np.nan, "max": np.nan}
    p50, p95, p99 = np.percentile(gaps, [50, 95, 99])
    return {"n": int(gaps.size), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(gaps.max())}


def probe(viewer, until, interact: bool = True) -> list[float]:
    """Run the Qt event loop until `until()` is true; return the probe's tick times."""
    from qtpy.QtCore import QEventLoop, QTimer

    ticks: list[float] = []
    loop = QEventLoop()
    timer = QTimer(interval=PROBE_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    step = {"k": 0}

    def interact_once() -> None:  # a user panning and zooming: every tick redraws the canvas
        k = step["k"] = step["k"] + 1
        cam = viewer.camera
        cam.zoom *= 1.04 if (k // 10) % 2 else 1 / 1.04
        cy, cx = cam.center[-2:]
        cam.center = (cy + (2 if k % 2 else -2), cx)

    mover = QTimer(interval=INTERACT_MS)
    mover.timeout.connect(interact_once)
    check = QTimer(interval=50)
    check.timeout.connect(lambda: until() and loop.quit())
    timer.start()
    if interact:
        mover.start()
    check.start()
    loop.exec_()
    for t in (timer, mover, check):
        t.stop()
    return ticks


def setup(viewer, model: str):
    """The 2D sample, its segmentation by `model`, and some painted corrections."""
    from napari_unet._qt.retrain_widget import RetrainWidget
    from napari_unet._qt.sample_data import load_sample
    from napari_unet._qt.segment_widget import SegmentWidget

    for data, kwargs, kind in load_sample("nuclei2d", restore=False):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    seg, ret = SegmentWidget(viewer), RetrainWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment", area="right")
    viewer.window.add_dock_widget(ret, name="Retrain", area="right", tabify=True)
    seg.model.refresh(select=model)
    ret.init.refresh(select=model)
    seg.run()
    probe(viewer, lambda: not seg.runner.running, interact=False)
    labels = viewer.layers[-1]
    labels.brush_size = 12
    rng = np.random.default_rng(0)
    for _ in range(12):  # painted strokes: new objects and erased pixels
        y, x = rng.integers(40, 470, 2)
        labels.paint((int(y), int(x)), int(rng.integers(0, 2)) * (int(labels.data.max()) + 1))
    return seg, ret


def run(seconds: float, model: str = "bundled") -> list[dict]:
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    seg, ret = setup(viewer, model)
    rows = []
    idle_end = time.perf_counter() + min(seconds, 20)
    ticks = probe(viewer, lambda: time.perf_counter() > idle_end)
    rows.append({"case": "panning/zooming, no training", **stall_stats(ticks)})
    for background, label in ((False, "normal priority"), (True, "low priority (default)")):
        ret.background = background
        ret.resegment.setChecked(False)
        ret.init.refresh(select=model)
        ret.seconds.setValue(seconds)
        ret.start()
        t0 = time.perf_counter()
        ticks = probe(viewer, lambda: not ret.runner.running)
        steps = ret.last_result.metrics.get("steps") if ret.last_result else None
        rows.append(
            {
                "case": f"panning/zooming while retraining, worker at {label}",
                **stall_stats(ticks),
                "steps": steps,
                "wall": time.perf_counter() - t0,
            }
        )
    viewer.close()
    return rows


def table(rows: list[dict], note: str = "") -> str:
    import torch

    head = (
        "| case | ticks | p50 stall (ms) | p95 (ms) | p99 (ms) | max (ms) | training steps |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['case']} | {r['n']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['max']:.1f} "
        f"| {r['steps'] if r.get('steps') is not None else '-'} |\n"
        for r in rows
    )
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), Qt {_qt_version()}, "
        f"{os.environ.get('DISPLAY_NOTE', 'Xvfb + Mesa llvmpipe')}"
    )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    caption = (
        f"Measured {date} on {machine}. A {PROBE_MS} ms main-thread timer; a stall is how late a tick "
        f"comes. The canvas is panned/zoomed every {INTERACT_MS} ms (software OpenGL, so redraws are "
        "themselves slow). Target while training: p99 <= 50 ms." + (f" {note}" if note else "") + "\n"
    )
    return caption + "\n" + head + body


def _qt_version() -> str:
    from qtpy import QT_VERSION

    return str(QT_VERSION)


RESULTS = Path(__file__).with_name("RESULTS.md")


def write_results(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the '## GUI responsiveness' section of RESULTS.md."""
    section = "## GUI responsiveness\n\n" + text.rstrip() + "\n"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"## GUI responsiveness\n.*?(?=\n## |\Z)", re.S)
    new = pattern.sub(section.rstrip("\n"), old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    path.write_text(new if new.endswith("\n") else new + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="training budget")
    p.add_argument("--model", default="bundled", help="model to start from")
    p.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    p.add_argument("--note", default="", help="a remark on the conditions, added to the table's caption")
    args = p.parse_args()
    import tempfile

    # Versions saved by the benchmark's training run go to a throwaway store, never the user's.
    os.environ["NAPARI_UNET_MODELS"] = tempfile.mkdtemp(prefix="napari-unet-models-")
    os.environ["NAPARI_UNET_PROJECT"] = tempfile.mkdtemp(prefix="napari-unet-project-")
    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1000), color_depth=24)
        display.start()
    try:
        rows = run(args.seconds, args.model)
    finally:
        if display is not None:
            display.stop()
    text = table(rows, args.note)
    print(text)
    for r in rows:
        if "steps" in r:
            print(f"training: {r['steps']} steps in {r['wall']:.1f} s wall")
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
