"""Shared fixtures: tiny models and small images keep the suite fast on a 2-core CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    # Saved versions go to a throwaway folder, never the user's; a CPU test must not see a GPU.
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(tmp_path_factory.mktemp("models")))
    torch.manual_seed(0)


@pytest.fixture
def tiny_model():
    from napari_unet.core.model import UNet, UNetConfig
    from napari_unet.core.modelfile import ModelInfo

    model = UNet(UNetConfig(base=4, depth=2)).eval()
    model.info = ModelInfo(config=model.config, diameter=24.0, name="tiny")
    return model


@pytest.fixture
def touching_discs():
    """Two touching discs of radius 12 and a separate one, with exact labels."""
    yy, xx = np.mgrid[:96, :128]
    labels = np.zeros((96, 128), np.int32)
    for i, (cy, cx) in enumerate([(48, 40), (48, 63), (20, 105)], start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2) & (labels == 0)] = i
    return labels


def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Run torch on one thread for the test (tiny networks train faster without thread overhead)."""
    yield from _torch_threads(1)


@pytest.fixture
def two_threads():
    """Run torch on two threads, whatever the machine has (the CPU paths that share them out need two)."""
    yield from _torch_threads(2)
