"""`napari-unet train` and `napari-unet models`: contracts and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core import versions
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.modelfile import ModelInfo, read_model, save_model
from napari_unet.core.synth import synth_nuclei

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead


@pytest.fixture
def files(tmp_path):
    img, lab = synth_nuclei((96, 96), rng=11)
    mask = np.zeros(lab.shape, np.uint8)
    mask[:, :60] = 1
    paths = {k: tmp_path / f"{k}.tif" for k in ("img", "lab", "mask")}
    tifffile.imwrite(paths["img"], img)
    tifffile.imwrite(paths["lab"], lab)
    tifffile.imwrite(paths["mask"], mask)
    model = UNet(UNetConfig(base=4, depth=2)).eval()
    paths["init"] = save_model(model, ModelInfo(config=model.config, name="tiny"), tmp_path / "tiny.safetensors")
    paths["out"] = tmp_path / "out.safetensors"
    return paths


def _train_args(f, *extra):
    return [
        "train", "--image", str(f["img"]), "--labels", str(f["lab"]), "--init", str(f["init"]),
        "--device", "cpu", "-o", str(f["out"]), "-q", *extra,
    ]  # fmt: skip


def test_train_writes_a_loadable_model_and_registers_a_version(files, capsys):
    assert main(_train_args(files, "--mask", str(files["mask"]), "--steps", "3", "--keep", "0.8")) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("trained 3 steps") and str(files["out"]) in out[0]
    model, info = read_model(files["out"])
    assert info.provenance["parent"]["name"] == "tiny" and info.provenance["data"][0]["mask_sha256"]
    assert info.provenance["settings"]["interpolate"] == 0.8
    listed = versions.list_versions()
    assert len(listed) == 1 and listed[0].name == info.name and listed[0].name in out[0]
    seg = files["img"].parent / "seg.tif"
    assert (
        main(["segment", str(files["img"]), "--model", str(files["out"]), "-o", str(seg), "-q", "--device", "cpu"]) == 0
    )
    assert tifffile.imread(seg).shape == (96, 96)


def test_train_on_a_colour_image_takes_the_channel_segment_takes(files, capsys):
    """An RGB PNG (nuclei in blue beside a cell stain in red) was read as Y planes of X x 3 px and refused against
    its (Y, X) labels; `train` now takes the nuclear-looking channel, as `segment` does, and says so."""
    import imageio.v3 as iio

    from napari_unet.core.appearance import membrane_stain

    img, lab = tifffile.imread(files["img"]), tifffile.imread(files["lab"])
    nuclei = (img / img.max() * 255).astype(np.uint8)
    cells = membrane_stain(nuclei.astype(np.float32), lab, np.random.default_rng(0)).clip(0, 255).astype(np.uint8)
    files["img"] = files["img"].with_suffix(".png")
    iio.imwrite(files["img"], np.stack([cells, np.zeros_like(nuclei), nuclei], -1))
    assert main(_train_args(files, "--steps", "2")) == 0
    assert "channel 2, as segment takes it" in capsys.readouterr().err


def test_models_list_show_revert(files, capsys):
    assert main(_train_args(files, "--steps", "2", "--name", "first")) == 0
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].lstrip("* ").startswith("bundled") and any("first" in ln for ln in lines[1:])
    assert main(["models", "show", "first"]) == 0
    assert '"parent"' in capsys.readouterr().out
    assert main(["models", "revert", "bundled"]) == 0
    assert versions.current_name() is None
    assert main(["models", "revert", "first"]) == 0
    assert versions.current_name() == "first"
    capsys.readouterr()
    assert main(["models", "revert", "nope"]) == 1
    assert capsys.readouterr().err.startswith("napari-unet: error:")


def _bad(tmp_path, files, name, arr):
    p = tmp_path / name
    tifffile.imwrite(p, arr)
    return str(p)


@pytest.mark.parametrize(
    "case",
    [
        "shape",
        "empty_mask",
        "float_labels",
        "unreadable",
        "missing",
        "zero_steps",
        "zero_seconds",
        "exists",
        "3d",
        "keep",
    ],
)
def test_bad_input_is_one_line_and_leaves_no_model(files, tmp_path, capsys, case):
    lab = tifffile.imread(files["lab"])
    args = _train_args(files, "--steps", "2")
    if case == "shape":
        args[4] = _bad(tmp_path, files, "lab2.tif", lab[:90])
    elif case == "empty_mask":
        args += ["--mask", _bad(tmp_path, files, "m0.tif", np.zeros_like(lab, np.uint8))]
    elif case == "float_labels":
        args[4] = _bad(tmp_path, files, "labf.tif", lab.astype(np.float32) * 0.5)
    elif case == "unreadable":
        (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
        args[2] = str(tmp_path / "junk.tif")
    elif case == "missing":
        args[2] = str(tmp_path / "nope.tif")
    elif case == "zero_steps":
        args[-1] = "0"
    elif case == "zero_seconds":
        args[-2:] = ["--seconds", "0"]
    elif case == "exists":
        files["out"].write_bytes(b"precious")
    elif case == "3d":
        args[2] = _bad(tmp_path, files, "stack.tif", np.zeros((5, 96, 96), np.uint8))  # 3 planes: planar RGB
    elif case == "keep":
        args += ["--keep", "0"]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-unet: error:"), err
    if case == "exists":
        assert files["out"].read_bytes() == b"precious"
    else:
        assert not files["out"].exists()
    assert list(versions.models_dir().glob("*.safetensors")) == []


def test_train_on_chosen_planes_of_a_stack(files, tmp_path, capsys):
    img, lab = tifffile.imread(files["img"]), tifffile.imread(files["lab"])
    stack, labs = np.stack([img, img[::-1], img[:, ::-1]]), np.stack([lab, np.zeros_like(lab), lab[:, ::-1]])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "stack_lab.tif", labs, photometric="minisblack")
    args = _train_args(files, "--steps", "2")
    args[2], args[4] = str(tmp_path / "stack.tif"), str(tmp_path / "stack_lab.tif")
    assert main(args) == 0  # default: the planes that hold labels (0 and 2)
    _, info = read_model(files["out"])
    assert len(info.provenance["data"]) == 2
    capsys.readouterr()
    assert main(args + ["--planes", "0-1", "--overwrite"]) == 0
    assert len(read_model(files["out"])[1].provenance["data"]) == 2
    assert main(args + ["--planes", "5", "--overwrite"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "planes 5" in err[0]


def test_train_on_side_views_of_a_stack_painted_in_3d(files, tmp_path, capsys):
    from napari_unet.core.synth3d import synth_nuclei_3d
    from napari_unet.core.trainingdata import side_view_planes

    img, lab = synth_nuclei_3d((8, 48, 48), anisotropy=2, rng=4)
    mask = np.zeros(lab.shape, np.uint8)
    mask[2:6, 10:30, 10:20] = 1  # a block painted with a 3D brush: 4 XY planes, 20 XZ + 10 YZ slices
    for name, a in (("s", img), ("sl", lab), ("sm", mask)):
        tifffile.imwrite(tmp_path / f"{name}.tif", a, photometric="minisblack")
    args = _train_args(files, "--steps", "2", "--mask", str(tmp_path / "sm.tif"), "--side-views", "2")
    args[2], args[4] = str(tmp_path / "s.tif"), str(tmp_path / "sl.tif")
    assert main(args) == 0
    n_side = len(side_view_planes(img, lab, mask, anisotropy=2)[0])
    assert n_side == 16 + 10  # the 20 XZ slices capped at SIDE_VIEW_MAX, evenly spaced
    assert len(read_model(files["out"])[1].provenance["data"]) == 4 + n_side
    bad = [a for a in args if a not in ("--mask", str(tmp_path / "sm.tif"))]
    assert main(bad + ["--overwrite"]) == 1
    assert "--side-views needs a ZYX stack and its --mask" in capsys.readouterr().err


def test_the_model_file_is_never_written_over_an_input(files, capsys):
    before = {k: files[k].read_bytes() for k in ("img", "lab", "init")}
    for target, message in [
        (files["lab"], "must end in .safetensors"),
        (files["init"], "is an input of this run"),
        (files["lab"].with_suffix(".txt"), "must end in .safetensors"),
    ]:
        args = _train_args(files, "--steps", "1", "--overwrite")
        args[args.index("-o") + 1] = str(target)
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert {k: files[k].read_bytes() for k in ("img", "lab", "init")} == before
    rc = main(["export", str(files["init"]), "-o", str(files["init"].with_name("x.bin"))])
    assert rc == 1 and "must end in .zip" in capsys.readouterr().err
