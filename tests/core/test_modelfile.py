import pytest
import torch

from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.modelfile import ModelFileError, ModelInfo, read_info, read_model, save_model
from napari_unet.core.scores import MIN_SCORE


def test_round_trip(tmp_path, tiny_model):
    info = ModelInfo(config=tiny_model.config, diameter=17.5, name="x", provenance={"parent": "bundled"})
    path = save_model(tiny_model, info, tmp_path / "m.safetensors")
    model, info2 = read_model(path)
    assert info2.diameter == 17.5 and info2.provenance == {"parent": "bundled"} and info2.config == tiny_model.config
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), tiny_model.eval()(x))
    assert not model.training
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        read_model(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path, tiny_model):
    path = save_model(tiny_model, ModelInfo(config=tiny_model.config), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="unreadable or truncated"):
        read_model(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x00not a model" * 50)
    with pytest.raises(ModelFileError):
        read_model(path)


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelFileError, match="not a napari-unet model file"):
        read_model(path)


def test_pickle_is_refused(tmp_path, tiny_model):
    path = tmp_path / "m.pt"
    torch.save(tiny_model, path)
    with pytest.raises(ModelFileError):
        read_model(path)


def test_weights_that_do_not_fit_the_config(tmp_path, tiny_model):
    from safetensors.torch import save_file

    meta = ModelInfo(config=UNetConfig(base=8, depth=2)).to_metadata()
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path), metadata=meta)
    with pytest.raises(ModelFileError, match="does not fit its own architecture"):
        read_model(path)


def test_non_finite_weights_rejected(tmp_path):
    m = UNet(UNetConfig(base=4, depth=2))
    with torch.no_grad():
        m.head.weight[0, 0] = float("nan")
    path = save_model(m, ModelInfo(config=m.config), tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match="non-finite"):
        read_model(path)


@pytest.mark.parametrize("key, value, old_default, bads", [
    ("mask_threshold", 0.65, 0.5, ("0", "1.5", "NaN")),
    ("min_score", 0.0, MIN_SCORE, ("-0.1", "1", "NaN")),
    ("outline_level", 0.2, 0.0, ("-0.1", "1", "NaN")),
])  # fmt: skip
def test_thresholds_travel_with_the_model(tmp_path, tiny_model, key, value, old_default, bads):
    from dataclasses import replace

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save_model(tiny_model, replace(tiny_model.info, **{key: value}), tmp_path / "m.safetensors")
    assert getattr(read_info(path), key) == value
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    old = {k: v for k, v in meta.items() if k != key}  # a file written before the field existed
    save_file(tensors, tmp_path / "old.safetensors", metadata=old)
    assert getattr(read_info(tmp_path / "old.safetensors"), key) == old_default
    for bad in bads:
        save_file(tensors, tmp_path / "bad.safetensors", metadata={**meta, key: bad})
        with pytest.raises(ModelFileError, match=key):
            read_info(tmp_path / "bad.safetensors")
