"""Model store: names, no overwrites, lineage, list, current pointer and revert."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from napari_unet import api
from napari_unet.core import versions
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.modelfile import ModelFileError, ModelInfo
from napari_unet.core.synth import synth_nuclei
from napari_unet.core.trainingdata import array_sha256

FAST = {"replay": 0, "probe_images": 0, "patch": 64, "batch": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead


def _tiny(name: str = "tiny") -> UNet:
    model = UNet(UNetConfig(base=4, depth=2)).eval()
    model.info = ModelInfo(config=model.config, name=name)
    return model


def _run(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_names_are_numbered_and_never_overwritten():
    m = _tiny()
    when = datetime(2026, 1, 2, 3, 4, 5)
    assert versions.new_version_name(now=when) == "v0001-20260102-030405"
    p1 = versions.save_version(m, ModelInfo(config=m.config))
    p2 = versions.save_version(m, ModelInfo(config=m.config))
    assert p1 != p2 and p1.name.startswith("v0001-") and p2.name.startswith("v0002-")
    p3 = versions.save_version(m, ModelInfo(config=m.config), name="mine")
    raw = p3.read_bytes()
    with pytest.raises(FileExistsError):
        versions.save_version(_tiny("other"), ModelInfo(config=m.config), name="mine")
    assert p3.read_bytes() == raw
    assert not [p for p in versions.models_dir().iterdir() if p.name.endswith(".part")]
    for bad in ("bundled", "current", "../x", "", "a/b", "-x"):
        with pytest.raises(ValueError):
            versions.validate_name(bad)


def test_current_pointer_and_revert():
    assert api.resolve_model_path("current") == api.bundled_model_path()
    assert api.current_version() == "bundled"
    m = _tiny()
    pa = versions.save_version(m, ModelInfo(config=m.config), name="a")
    versions.save_version(m, ModelInfo(config=m.config), name="b")
    assert api.revert("a") == pa
    assert api.load_model("current").info.name == "a"
    assert [v.name for v in api.list_versions() if v.current] == ["a"]
    api.revert("bundled")
    assert api.resolve_model_path("current") == api.bundled_model_path()
    with pytest.raises(ModelFileError):
        api.revert("missing")
    assert api.resolve_model_path("b") == versions.models_dir() / "b.safetensors"
    with pytest.raises(ModelFileError):
        api.load_model("no-such-version")


def test_a_corrupt_current_pointer_is_an_error_not_the_bundled_model(capsys):
    from napari_unet import cli

    m = _tiny()
    versions.save_version(m, ModelInfo(config=m.config), name="mine")
    api.revert("mine")
    pointer = versions.models_dir() / versions.POINTER
    for text in ("{trunc", '{"set": "x"}', '["mine"]', '{"name": 3}', '{"name": null}', '{"name": ""}',
                 '{"name": "current"}', '{"name": "../x"}'):  # fmt: skip
        pointer.write_text(text)
        with pytest.raises(ModelFileError, match="current-model pointer .* unreadable .*models revert"):
            api.load_model("current")
        with pytest.raises(ModelFileError, match="unreadable"):
            api.current_version()
        assert versions.current_name() is None  # listing still works, and marks nothing current
        assert [v.name for v in api.list_versions() if v.current] == []
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "unreadable" in out[0] and not any(line.startswith("*") for line in out)
    api.revert("mine")  # the way out the message names
    assert api.load_model("current").info.name == "mine"


def test_training_run_records_lineage_and_sets_current():
    img, lab = synth_nuclei((96, 96), rng=3)
    mask = np.zeros(lab.shape, np.uint8)
    mask[:, :64] = 1
    parent = versions.save_version(_tiny(), ModelInfo(config=UNetConfig(base=4, depth=2)), name="parent")
    res = _run(api.train(img, lab, mask, init="parent", steps=4, device="cpu", seed=7, make_current=True, **FAST))
    assert res.path is not None and res.path.exists() and res.name.startswith("v0001-")
    prov = versions.read_info(res.path).provenance
    assert prov["parent"]["name"] == "parent"
    assert prov["parent"]["file_sha256"] == versions.file_sha256(parent)
    assert prov["data"][0] == {
        "image_sha256": array_sha256(img),
        "labels_sha256": array_sha256(lab),
        "mask_sha256": array_sha256(mask),
        "shape": [96, 96],
    }
    assert prov["seed"] == 7 and prov["settings"]["patch"] == 64 and prov["budget"]["steps"] == 4
    assert {"val_before", "val_after", "steps", "seconds", "device"} <= set(prov["metrics"])
    assert isinstance(prov["improved"], bool) and prov["date"]
    assert versions.current_name() == res.name
    # A second run from "current" names its parent, and revert goes back.
    res2 = _run(api.train(img, lab, mask, init="current", steps=2, device="cpu", make_current=True, **FAST))
    assert versions.read_info(res2.path).provenance["parent"]["name"] == res.name
    listed = versions.list_versions()
    assert [v.name for v in listed] == ["parent", res.name, res2.name]
    assert listed[2].parent == res.name and listed[2].current
    api.revert(res.name)
    assert api.load_model("current").info.name == res.name


def test_not_improved_version_is_saved_but_not_made_current(monkeypatch):
    import napari_unet.core.train as train_mod

    real = train_mod.evaluate_pixels
    calls = {"n": 0}

    def worse(*a, **k):  # the held-out metric drops from the first evaluation to the last
        calls["n"] += 1
        out = real(*a, **k)
        if out is not None:
            out["metric"] = 0.9 if calls["n"] == 1 else 0.5
        return out

    monkeypatch.setattr(train_mod, "evaluate_pixels", worse)
    img, lab = synth_nuclei((96, 96), rng=3)
    res = _run(api.train(img, lab, init=_tiny(), steps=2, device="cpu", name="worse", **FAST))
    assert res.metrics["improved"] is False and res.path.exists()
    assert versions.current_name() is None
    with pytest.raises(Exception, match="exists"):
        _run(api.train(img, lab, init=_tiny(), steps=2, device="cpu", name="worse", **FAST))
