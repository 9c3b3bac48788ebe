"""Reader (OME-TIFF, TIFF, zarr, OME-Zarr, folder, lazy), writer, sample data, manifest."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet._qt import reader as reader_mod
from napari_unet._qt.reader import get_reader
from napari_unet._qt.writer import write_labels_tiff


def _read(path):
    fn = get_reader(str(path))
    assert fn is not None, f"no reader for {path}"
    return fn(str(path))


def test_ome_tiff_axes_pixel_size_and_channels(tmp_path):
    data = np.arange(3 * 2 * 16 * 24, dtype=np.uint16).reshape(3, 2, 16, 24)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0},
    )
    layers = _read(path)
    assert sorted(k["name"] for _, k, _ in layers) == ["cells [c0]", "cells [c1]"]
    for d, k, kind in layers:
        c = k["metadata"]["napari_unet"]["channel"]
        assert kind == "image" and d.shape == (3, 16, 24)
        np.testing.assert_array_equal(np.asarray(d), data[:, c])
        np.testing.assert_allclose(k["scale"], (2.0, 0.5, 0.5))
        assert k["metadata"]["napari_unet"]["axes"] == "ZYX"


def test_the_nuclear_channel_comes_last_so_that_segment_takes_it(tmp_path):
    """napari makes the last layer a reader gives the active one, and Segment follows the active layer. A DAPI
    channel beside a marker of a third of the nuclei (EdU) or beside FISH spots must be that layer, wherever it
    is in the file."""
    from napari_unet.core import appearance as A
    from napari_unet.core.synth import SynthStyle, synth_nuclei

    img, lab = synth_nuclei((192, 192), rng=3, style=SynthStyle(diameter=(22.0, 22.0), density=(0.3, 0.3)))
    rng = np.random.default_rng(0)
    marker, spots = A.marker_stain(img, lab, rng, 0.3, 2.0), A.spot_stain(img, lab, rng, sigma=1.2)
    for order, nuclear in (((img, marker, spots), 0), ((marker, spots, img), 2), ((spots, img, marker), 1)):
        path = tmp_path / f"dapi{nuclear}.ome.tif"
        tifffile.imwrite(path, np.stack(order).astype(np.uint16), ome=True, metadata={"axes": "CYX"})
        layers = _read(path)
        assert [k["metadata"]["napari_unet"]["channel"] for _, k, _ in layers][-1] == nuclear
        assert sorted(k["name"] for _, k, _ in layers) == [f"dapi{nuclear} [c{c}]" for c in range(3)]


def test_plain_tiff_stack(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (5, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", data)
    ((d, k, kind),) = _read(tmp_path / "s.tif")
    np.testing.assert_array_equal(np.asarray(d), data)
    assert kind == "image" and k["name"] == "s" and k["metadata"]["napari_unet"]["axes"] == "ZYX"


def test_large_tiff_opens_lazily(tmp_path, monkeypatch):
    import napari_unet.core.io as core_io

    data = np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", data, tile=(32, 32), photometric="minisblack", metadata={"axes": "ZYX"})
    monkeypatch.setattr(core_io, "LAZY_BYTES", 1000)  # anything above 1 kB counts as "bigger than memory"
    ((d, _, _),) = _read(tmp_path / "big.tif")
    assert not isinstance(d, np.ndarray)
    np.testing.assert_array_equal(np.asarray(d[2]), data[2])


def test_zarr_and_ome_zarr(tmp_path):
    import zarr

    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(32, 48), dtype="float32")
    plain[:] = 3.0
    ((d, k, _),) = _read(tmp_path / "plain.zarr")
    assert d.shape == (32, 48) and float(np.asarray(d).mean()) == 3.0
    g = zarr.open_group(str(tmp_path / "nuc.ome.zarr"), mode="w")
    arr = g.create_array("0", shape=(4, 32, 48), dtype="uint16", chunks=(1, 32, 48))
    arr[:] = 7
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space"} for a in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}],
        }
    ]
    ((d, k, _),) = _read(tmp_path / "nuc.ome.zarr")
    assert d.shape == (4, 32, 48) and k["name"] == "nuc"
    np.testing.assert_allclose(k["scale"], (2.0, 0.5, 0.5))


def test_folder_of_2d_images_is_one_stack(tmp_path):
    folder = tmp_path / "planes"
    folder.mkdir()
    for i in (1, 2, 10):  # natural order: 1, 2, 10
        tifffile.imwrite(folder / f"img{i}.tif", np.full((12, 16), i, np.uint16))
    ((d, k, _),) = _read(folder)
    assert d.shape == (3, 12, 16)
    assert [int(d[i, 0, 0]) for i in range(3)] == [1, 2, 10]
    tifffile.imwrite(folder / "odd.tif", np.zeros((5, 5), np.uint16))
    with pytest.raises(ValueError, match="must match"):
        _read(folder)


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_reader(str(empty)) is None


def test_writer_roundtrip(tmp_path):
    labels = np.zeros((2, 10, 12), np.int32)
    labels[1, 2:5, 3:7] = 4
    (out,) = write_labels_tiff(str(tmp_path / "out"), labels, {"name": "lab", "scale": [1, 1, 1]})
    assert out.endswith("out.tif")
    np.testing.assert_array_equal(tifffile.imread(out), labels)


def test_sample_data():
    from napari_unet._qt.sample_data import SAMPLES, nuclei_2d, nuclei_3d, sample_path

    ((d2, k2, _),) = [la for la in nuclei_2d() if la[2] == "image"]
    ((d3, k3, _),) = [la for la in nuclei_3d() if la[2] == "image"]
    assert d2.ndim == 2 and d3.ndim == 3
    np.testing.assert_allclose(k3["scale"], (0.29, 0.26, 0.26))
    assert sum(sample_path(k).stat().st_size for k in SAMPLES) < 2_000_000


def test_manifest_is_valid_and_complete():
    from importlib import resources

    import npe2

    path = resources.files("napari_unet") / "napari.yaml"
    manifest = npe2.PluginManifest.from_file(str(path))
    c = manifest.contributions
    assert c.readers and c.writers and len(c.sample_data) == 2 and len(c.widgets) == 4
    for cmd in c.commands:  # every command resolves to something importable
        module, attr = cmd.python_name.split(":")
        assert hasattr(__import__(module, fromlist=[attr]), attr), cmd.python_name
    assert reader_mod.get_reader  # imported without torch-heavy side effects


def test_plugin_is_registered_with_napari(make_napari_viewer, project):
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert pm.get_manifest("napari-unet").display_name == "napari U-Net"
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert type(widget).__name__ == "SegmentWidget"
    layers = viewer.open_sample("napari-unet", "nuclei2d")
    assert layers and layers[0].data.shape == (512, 512)
