"""bioimage.io packages: ``bioimageio test`` passes offline, our reader round-trips them and refuses hostile zips."""

from __future__ import annotations

import json
import socket
import struct
import tempfile
import zipfile

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("bioimageio.core")
pytest.importorskip("onnxscript")

from napari_unet.core.bioimageio_package import MODEL_MEMBER, is_package, read_package, write_package  # noqa: E402
from napari_unet.core.errors import InputError, ModelFileError  # noqa: E402
from napari_unet.core.export import exportable  # noqa: E402
from napari_unet.core.model import UNet, UNetConfig  # noqa: E402
from napari_unet.core.modelfile import ModelInfo  # noqa: E402


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    torch.manual_seed(0)
    model = UNet(UNetConfig(base=4, depth=2)).eval()
    info = ModelInfo(
        config=model.config, diameter=21.5, name="tiny-ft", mask_threshold=0.55, min_score=0.0,
        provenance={"parent": {"name": "bundled"}, "data": ["abc123"], "metrics": {"ap50": 0.5}},
    )  # fmt: skip
    out = write_package(model, info, tmp_path_factory.mktemp("tiny") / "tiny.zip")
    return model, info, out


@pytest.fixture(scope="module")
def bundled_package(tmp_path_factory):
    from napari_unet.api import load_model

    model = load_model("bundled")
    out = write_package(model, model.info, tmp_path_factory.mktemp("bundled") / "bundled.zip")
    return model, out


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection is recorded and fails (bioimageio must not try)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def _bioimageio_test(path) -> None:
    from bioimageio.core import test_model

    summary = test_model(path, devices=["cpu"])
    failed = [f"{d.name}: {[e.msg[:200] for e in d.errors]}" for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed


def _rdf(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def test_tiny_package_passes_bioimageio_test_offline(tiny_package, no_network):
    _, _, path = tiny_package
    _bioimageio_test(path)
    assert no_network == []


def test_bundled_package_passes_bioimageio_test_offline(bundled_package, no_network):
    _, path = bundled_package
    _bioimageio_test(path)
    assert no_network == []


def test_package_contents(tiny_package):
    model, info, path = tiny_package
    rdf = _rdf(path)
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert rdf["license"] == "BSD-3-Clause"
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    assert rdf["authors"] == [{"name": "napari-unet developers"}]
    assert "http" not in yaml.safe_dump(rdf)  # every URL in an rdf is checked online by bioimageio
    ours = rdf["config"]["napari-unet"]
    assert ours["format"] == "napari-unet/1" and ours["config"] == model.config.to_dict()
    assert ours["diameter"] == 21.5 and ours["mask_threshold"] == 0.55 and ours["name"] == "tiny-ft"
    assert ours["min_score"] == 0.0
    assert ours["normalization"] == info.normalization
    (inp,) = rdf["inputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert inp["axes"][2]["size"] == {"min": 4, "step": 4}  # depth 2, same mode
    scale = next(p for p in inp["preprocessing"] if p["id"] == "scale_range")["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"]) == (1.0, 99.8) and "batch" not in scale["axes"]
    assert "21.5 px" in rdf["description"]
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert {MODEL_MEMBER, "lineage.json", "napari_unet_arch.py", "cover.png", "README.md"} <= names
        assert json.loads(zf.read("lineage.json")) == info.provenance
        doc = zf.read("README.md").decode()
        assert "tiny-ft" in doc and "fine-tuned from `bundled`" in doc and "Bundled model card" in doc
        assert zf.read("cover.png")[:8] == b"\x89PNG\r\n\x1a\n"
        with zf.open("test_input.npy") as f:
            test_input = np.load(f)
        assert test_input.shape == (1, 1, 256, 256) and test_input.max() > 1000  # stored unnormalised


def test_architecture_file_has_the_exported_state_dict(tiny_package, tmp_path):
    # The shipped architecture rebuilds exportable(model) from its kwargs, without napari-unet.
    import importlib.util

    model, _, path = tiny_package
    with zipfile.ZipFile(path) as zf:
        (tmp_path / "arch.py").write_bytes(zf.read("napari_unet_arch.py"))
        kwargs = _rdf(path)["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
    spec = importlib.util.spec_from_file_location("napari_unet_arch_test", tmp_path / "arch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "napari_unet" not in (tmp_path / "arch.py").read_text()
    net = module.NapariUNet(**kwargs).eval()
    net.load_state_dict(exportable(model).state_dict(), strict=True)
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(net(x), exportable(model)(x))


def test_tiny_round_trip(tiny_package):
    model, info, path = tiny_package
    assert is_package(path)
    model2, info2 = read_package(path)
    assert info2 == info and model2.info == info2
    for (k, a), (k2, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_bundled_round_trip_gives_identical_labels(bundled_package):
    import tifffile

    from napari_unet.core.bioimageio_package import SAMPLE
    from napari_unet.core.jobs import drain
    from napari_unet.core.segment import segment_iter

    model, path = bundled_package
    model2, info2 = read_package(path)
    assert info2 == model.info
    image = tifffile.imread(SAMPLE)
    a = drain(segment_iter(image, model, device="cpu", diameter=24.0)).labels
    b = drain(segment_iter(image, model2, device="cpu", diameter=24.0)).labels
    assert a.max() > 20 and np.array_equal(a, b)


def test_existing_output_is_kept_without_overwrite(tmp_path, tiny_model):
    out = tmp_path / "model.zip"
    out.write_bytes(b"old")
    with pytest.raises((FileExistsError, InputError)):
        write_package(tiny_model, tiny_model.info, out)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]


# -- hostile and foreign packages -------------------------------------------------------------------------
def _write_zip(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)


def _ours(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in ("rdf.yaml", MODEL_MEMBER)}


def _declare_size(path, name: str, size: int) -> None:
    """Patch the uncompressed size that the central directory declares for member `name`."""
    data = bytearray(path.read_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        n_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + n_len] == name.encode():
            struct.pack_into("<I", data, at + 24, size)
            break
        at += 4
    else:  # pragma: no cover - helper misuse
        raise AssertionError(f"{name} not in the central directory")
    path.write_bytes(bytes(data))


def _refused(path, match: str, monkeypatch, tmp_path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where read_package would put anything
    with pytest.raises(ModelFileError, match=match) as exc:
        read_package(path)
    assert "\n" not in str(exc.value)
    assert list(scratch.iterdir()) == []
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/tmp/evil", "C:/evil", "..\\evil"])
def test_unsafe_member_paths_are_refused(tiny_package, tmp_path, monkeypatch, name):
    path = tmp_path / "bad.zip"
    _write_zip(path, {**_ours(tiny_package[2]), name: b"evil"})
    _refused(path, "unsafe path", monkeypatch, tmp_path)


def test_declared_zip_bomb_is_refused(tiny_package, tmp_path, monkeypatch):
    path = tmp_path / "bomb.zip"
    _write_zip(path, {**_ours(tiny_package[2]), "big.bin": b"\x00" * 1000})
    _declare_size(path, "big.bin", 3 * 2**30 - 1)
    assert zipfile.ZipFile(path).getinfo("big.bin").file_size == 3 * 2**30 - 1
    _refused(path, "zip bomb", monkeypatch, tmp_path)


def test_real_zip_bomb_is_refused(tiny_package, tmp_path, monkeypatch):
    path = tmp_path / "bomb.zip"
    _write_zip(path, {**_ours(tiny_package[2]), "zeros.bin": bytes(64 * 2**20)})
    _refused(path, "zip bomb", monkeypatch, tmp_path)


def test_foreign_package_is_refused(tiny_package, tmp_path, monkeypatch):
    members = _ours(tiny_package[2])
    rdf = yaml.safe_load(members["rdf.yaml"])
    del rdf["config"]["napari-unet"]
    path = tmp_path / "foreign.zip"
    _write_zip(path, {"rdf.yaml": yaml.safe_dump(rdf).encode(), "weights.pt": b"\x80pickle"})
    assert is_package(path)
    _refused(path, "not exported by napari-unet", monkeypatch, tmp_path)


def test_tampered_weights_are_refused(tiny_package, tmp_path, monkeypatch):
    members = _ours(tiny_package[2])
    blob = bytearray(members[MODEL_MEMBER])
    blob[-1] ^= 0xFF
    path = tmp_path / "tampered.zip"
    _write_zip(path, {**members, MODEL_MEMBER: bytes(blob)})
    _refused(path, "sha256", monkeypatch, tmp_path)


@pytest.mark.parametrize(
    "content, match",
    [(b"not a zip", "not a readable zip"), (None, "does not exist")],
)
def test_broken_files_are_refused(tmp_path, monkeypatch, content, match):
    path = tmp_path / "x.zip"
    if content is not None:
        path.write_bytes(content)
    assert not is_package(path)
    _refused(path, match, monkeypatch, tmp_path)


def test_unpacked_folder_round_trip(tiny_package, tmp_path):
    _, info, path = tiny_package
    for name, data in _ours(path).items():
        (tmp_path / name).write_bytes(data)
    assert is_package(tmp_path / "rdf.yaml") and not is_package(tmp_path / MODEL_MEMBER)
    assert read_package(tmp_path / "rdf.yaml")[1] == info


def test_a_freshly_fine_tuned_version_passes_bioimageio_test_offline(tmp_path, no_network, one_thread):
    from napari_unet import api
    from napari_unet.core.synth import synth_nuclei

    img, lab = synth_nuclei((96, 96), rng=5)
    start = UNet(UNetConfig(base=4, depth=2)).eval()
    start.info = ModelInfo(config=start.config, name="tiny")
    result = api.train_model(img, lab, init=start, steps=3, device="cpu", patch=64, batch=2, replay=0,
                             probe_images=0, name="tuned")  # fmt: skip
    path = api.export("tuned", tmp_path / "tuned.zip")
    _bioimageio_test(path)
    assert no_network == []
    assert _rdf(path)["config"]["napari-unet"]["name"] == "tuned" == result.name
