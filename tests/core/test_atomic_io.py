"""The one atomic writer and what uses it: labels with their axes, file modes, no debris, no umask race."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tifffile

from napari_unet.core import versions
from napari_unet.core.atomic import atomic_write
from napari_unet.core.autosave import SavedCorrections, save_corrections
from napari_unet.core.errors import InputError
from napari_unet.core.io import read_image, write_labels
from napari_unet.core.modelfile import save_model


@pytest.mark.parametrize(
    "shape, axes",
    [((40, 48), "YX"), ((3, 40, 48), "ZYX"), ((4, 40, 48), "TYX"), ((4, 40, 48), None), ((2, 3, 40, 48), "TZYX"),
     ((2, 4, 40, 48), None), ((2, 3, 4, 40, 48), "TCZYX")],
)  # fmt: skip
def test_labels_round_trip_with_their_axes(tmp_path, shape, axes):
    labels = (np.arange(np.prod(shape)).reshape(shape) % 7).astype(np.int32)
    path = write_labels(tmp_path / "l.tif", labels, axes=axes, scale={"Y": 0.5, "X": 0.5})
    expected = axes or {2: "YX", 3: "ZYX", 4: "TZYX"}[len(shape)]
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == expected
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK  # never RGB(A)
        np.testing.assert_array_equal(tif.series[0].asarray(), labels)
    back = read_image(path)
    assert back.axes == expected and back.data.shape == shape and back.pixel_size == (0.5, 0.5)


def test_the_z_step_is_read_from_imagej_and_ome_tiff(tmp_path):
    stack = np.zeros((4, 32, 32), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(1 / 0.3, 1 / 0.3),
                     metadata={"spacing": 0.9, "axes": "ZYX"})  # fmt: skip
    tifffile.imwrite(tmp_path / "o.ome.tif", stack,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1.0})  # fmt: skip
    tifffile.imwrite(tmp_path / "plain.tif", stack)
    ij, ome, plain = (read_image(tmp_path / n) for n in ("ij.tif", "o.ome.tif", "plain.tif"))
    assert ij.pixel_size == pytest.approx((0.3, 0.3)) and ij.z_step == pytest.approx(0.9)
    assert ome.pixel_size == (0.2, 0.2) and ome.z_step == 1.0
    assert plain.z_step is None


def test_big_label_ids_and_bad_labels(tmp_path):
    labels = np.array([[0, 70_000], [1, 2]], np.int64)
    back = tifffile.imread(write_labels(tmp_path / "big.tif", labels))
    assert back.dtype == np.int32 and back.tolist() == labels.tolist()
    with pytest.raises(InputError, match="integers"):
        write_labels(tmp_path / "f.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="axes 'XY'"):
        write_labels(tmp_path / "a.tif", np.zeros((4, 4), np.uint16), axes="XY")
    with pytest.raises(FileExistsError):
        write_labels(tmp_path / "big.tif", labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_writer_gives_ordinary_file_modes(tmp_path, umask_022, tiny_model, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(tmp_path / "store"))
    made = [
        write_labels(tmp_path / "l.tif", np.zeros((8, 8), np.uint16)),
        save_model(tiny_model, tiny_model.info, tmp_path / "m.safetensors"),
        versions.save_version(tiny_model, tiny_model.info, "v-one"),
        save_corrections(tmp_path / "c.corrections.npz", SavedCorrections(np.zeros((4, 4)), np.zeros((4, 4)), "x")),
    ]
    versions.set_current("v-one")
    made.append(tmp_path / "store" / "current.json")
    assert {p.name: oct(_mode(p)) for p in made} == {p.name: oct(umask_022) for p in made}


def test_writers_never_touch_the_process_umask(tmp_path, monkeypatch):
    def forbidden(_mask):
        raise AssertionError("os.umask is process-wide: setting it races with other threads' writes")

    monkeypatch.setattr(os, "umask", forbidden)
    write_labels(tmp_path / "l.tif", np.zeros((8, 8), np.uint16))
    versions.set_current("bundled", root=tmp_path)


def test_interrupted_writes_leave_nothing_and_debris_is_cleaned(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    # Debris of writers that were killed (no cleanup ran): a dead pid, and an old mkstemp name.
    dead = tmp_path / ".out.tif.999999999-0badf00d.part"
    legacy = tmp_path / ".c.corrections.npz.k2j4_x9.part"
    alive = tmp_path / f".other.tif.{os.getpid()}-00000000.part"  # a write in progress in this process
    for p in (dead, legacy, alive):
        p.write_bytes(b"x" * 100)
        os.utime(p, (1e9, 1e9))
    write_labels(target, np.zeros((8, 8), np.uint16))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "out.tif"])


def test_exclusive_write_refuses_a_taken_name(tmp_path):
    target = tmp_path / "v.safetensors"
    with pytest.raises(FileExistsError), atomic_write(target, overwrite=False) as tmp:
        tmp.write_bytes(b"one")
        target.write_bytes(b"someone else")  # the name is taken while we write
    assert target.read_bytes() == b"someone else"
    assert list(tmp_path.iterdir()) == [target]
