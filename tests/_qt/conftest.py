"""Fixtures for the napari layer: a real viewer (under Xvfb), a tiny model as the current version."""

from __future__ import annotations

import napari  # noqa: F401  (the [testing] extra installs napari and pytest-qt: fail loudly without them)
import numpy as np
import pytest
import pytestqt  # noqa: F401
import torch


@pytest.fixture
def tiny_current(tiny_model):
    """The tiny test network saved as version "tiny" and made current (what the widgets select)."""
    from napari_unet.core import versions

    versions.save_version(tiny_model, tiny_model.info, "tiny")
    versions.set_current("tiny")
    return "tiny"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Autosaves of data without a file go here (never the user's folder)."""
    folder = tmp_path / "project"
    monkeypatch.setenv("NAPARI_UNET_PROJECT", str(folder))
    return folder


@pytest.fixture
def viewer(make_napari_viewer, tiny_current, project):
    torch.set_num_threads(1)
    return make_napari_viewer()


@pytest.fixture
def nuclei_image():
    """A small synthetic fluorescence image of separated round nuclei (float32, 128x160)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :160]
    img = np.zeros((128, 160), np.float32)
    for cy, cx in [(30, 30), (30, 90), (90, 50), (95, 120), (60, 140)]:
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 9.0**2))
    return (img * 1000 + rng.normal(100, 10, img.shape)).astype(np.float32)


@pytest.fixture
def wait_idle(qtbot):
    """wait_idle(runner): wait until a widget's JobRunner has finished its job."""

    def wait(runner, timeout: int = 60_000) -> None:
        qtbot.waitUntil(lambda: not runner.running, timeout=timeout)

    return wait
