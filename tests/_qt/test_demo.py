"""`napari-unet demo --screenshot`: opens napari with the sample stack, segments it, saves the window, exits."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def test_demo_screenshot_mode(tiny_current, project, tmp_path):
    out = tmp_path / "demo.png"
    env = {**os.environ, "NAPARI_UNET_MODELS": os.environ["NAPARI_UNET_MODELS"], "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "demo", "--screenshot", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.exists()
    from PIL import Image

    img = np.asarray(Image.open(out))
    assert img.shape[0] > 600 and img.shape[1] > 1000  # the whole window, docks included
    assert img[..., :3].std() > 10  # not a blank frame


def test_importing_the_package_does_not_import_torch_or_qt():
    code = (
        "import sys, napari_unet, napari_unet._qt.reader, napari_unet._qt.sample_data; "
        "print(sorted(m for m in ('torch', 'qtpy', 'PyQt5') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
