"""One way to do each thing: contracts that must live in one place stay there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "napari_unet"


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path.read_text()


def test_one_atomic_writer():
    for name, text in _sources():
        if name == "core/atomic.py":
            continue
        for pattern in (r"os\.umask\(", r"mkstemp\(", r"NamedTemporaryFile\(", r"\.part\b"):
            assert not re.search(pattern, text), f"{name} writes files its own way ({pattern}): use core.atomic"


def test_one_error_hierarchy():
    for name, text in _sources():
        for m in re.finditer(r"^class (\w+)\((\w+(?:, \w+)*)\):", text, flags=re.M):
            cls, bases = m.group(1), m.group(2)
            if not (cls.endswith("Error") or "Exception" in bases or "Error" in bases):
                continue
            if name == "core/errors.py":
                continue
            # The only other exception: the Qt relay that carries an engine error past superqt.
            assert (name, cls) == ("_qt/runner.py", "JobFailed"), f"{name} defines {cls}: derive it in core/errors.py"


def test_the_engine_no_longer_takes_the_rejected_options():
    from napari_unet.core.finetune import TrainSettings

    for option in ("l2sp", "distill", "ema", "select"):
        with pytest.raises(TypeError, match="unknown training setting"):
            TrainSettings.from_kwargs({option: 1})


def test_cli_segmentation_gets_the_out_of_memory_fallback(tmp_path, monkeypatch, capsys, tiny_model):
    import numpy as np
    import tifffile
    import torch

    import napari_unet.core.device as device_mod
    import napari_unet.core.segment as segment_mod
    from napari_unet.cli import main
    from napari_unet.core.modelfile import save_model

    real_select, real_iter = device_mod.select_device, segment_mod.segment_iter

    def select(spec="auto"):
        return torch.device("cuda") if str(spec) == "cuda" else real_select(spec)

    def fake_iter(image, model, *, device, **kw):
        if str(device) != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return (yield from real_iter(image, model, device="cpu", **kw))

    monkeypatch.setattr(device_mod, "select_device", select)
    monkeypatch.setattr(segment_mod, "segment_iter", fake_iter)
    img = tmp_path / "i.tif"
    tifffile.imwrite(img, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    model = save_model(tiny_model, tiny_model.info, tmp_path / "m.safetensors")
    args = ["segment", str(img), "--model", str(model), "--device", "cuda", "--diameter", "24", "-q"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "out of GPU memory" in out.err and "on the CPU" in out.err and "objects" in out.out


def test_the_package_exports_what_the_api_exports():
    import napari_unet
    from napari_unet import api

    assert set(napari_unet.__all__) <= set(api.__all__)
    for name in napari_unet.__all__:
        assert getattr(napari_unet, name) is getattr(api, name)
