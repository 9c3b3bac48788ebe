"""ONNX and TorchScript exports reproduce our probabilities; bad requests write nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import api
from napari_unet.cli import main
from napari_unet.core.errors import InputError
from napari_unet.core.export import exportable
from napari_unet.core.normalize import normalize_plane, percentile_range
from napari_unet.core.predict import InferenceModel

SAMPLE = Path(__file__).resolve().parents[2] / "napari_unet" / "resources" / "samples" / "nuclei2d_u2os.tif"


def _real_tiles(shape=(2, 1, 256, 320)) -> np.ndarray:
    """Normalised crops of the real U2OS sample (not random noise)."""
    img = tifffile.imread(SAMPLE).astype(np.float32)
    lo, hi = percentile_range(img)
    plane = normalize_plane(img, lo, hi)
    n, _, h, w = shape
    return np.stack([plane[k * 200 : k * 200 + h, k * 150 : k * 150 + w][None] for k in range(n)]).astype(np.float32)


@pytest.fixture(scope="module")
def bundled():
    return api.load_model("bundled")


def test_onnx_reproduces_our_probabilities_on_real_images(tmp_path, bundled):
    ort = pytest.importorskip("onnxruntime")
    path = api.export(bundled, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = InferenceModel.prepare(bundled, torch.device("cpu"), precision="fp32")
    for shape in [(2, 1, 256, 320), (1, 1, 512, 432)]:  # dynamic batch, height and width
        x = _real_tiles(shape)
        got = sess.run(None, {"image": x})[0]
        want = ours(x)  # the fp32 probabilities our tiled prediction blends
        assert got.shape == want.shape == (shape[0], 3, *shape[2:])
        assert np.abs(got - want).max() <= 1e-3


def test_torchscript_reproduces_the_network(tmp_path, bundled):
    path = api.export(bundled, tmp_path / "m.pt")
    ts = torch.jit.load(str(path))
    x = torch.from_numpy(_real_tiles((1, 1, 320, 256)))
    with torch.no_grad():
        assert (ts(x) - exportable(bundled)(x)).abs().max().item() <= 1e-5


def test_bad_export_requests_write_nothing(tmp_path, tiny_model, capsys):
    with pytest.raises(InputError, match="unknown export format"):
        api.export(tiny_model, tmp_path / "m.bin", format="pickle")
    existing = tmp_path / "m.pt"
    existing.write_bytes(b"mine")
    with pytest.raises(InputError, match="exists"):
        api.export(tiny_model, existing)
    assert existing.read_bytes() == b"mine"
    assert main(["export", "bundled", "-o", str(existing)]) == 1
    assert "exists" in capsys.readouterr().err
    with pytest.raises(InputError, match="folder"):
        api.export(tiny_model, tmp_path, format="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_cli_export_torchscript(tmp_path, capsys):
    out = tmp_path / "b.pt"
    assert main(["export", "bundled", "-o", str(out)]) == 0
    assert "exported bundled" in capsys.readouterr().out and out.stat().st_size > 1_000_000


def test_a_network_the_onnx_exporter_cannot_take_gives_one_line_and_no_file(tmp_path):
    pytest.importorskip("onnxscript")
    from napari_unet.core.model import UNet, UNetConfig
    from napari_unet.core.modelfile import ModelInfo

    valid = UNet(UNetConfig(base=4, depth=2, mode="valid")).eval()  # data-dependent crops: torch.export refuses
    valid.info = ModelInfo(config=valid.config)
    with pytest.raises(InputError, match="cannot be exported to ONNX") as err:
        api.export(valid, tmp_path / "v.onnx")
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
    assert api.export(valid, tmp_path / "v.pt").exists()  # TorchScript takes it
