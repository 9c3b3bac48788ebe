"""The `napari-unet segment` contracts, run as a user runs them (a subprocess for the entry point)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.synth import SynthStyle, synth_nuclei


@pytest.fixture(scope="module")
def nuclei_tif(tmp_path_factory):
    img, _ = synth_nuclei((160, 160), rng=3, style=SynthStyle(diameter=(22, 26), snr=(40, 40), dtype="uint16"))
    path = tmp_path_factory.mktemp("in") / "cells.tif"
    tifffile.imwrite(path, img)
    return path


def run(args, capsys):
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_entry_point_segments_and_summarises(nuclei_tif, tmp_path):
    out = tmp_path / "labels.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "segment", str(nuclei_tif), "-o", str(out), "--diameter", "24"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    labels = tifffile.imread(out)
    assert labels.shape == (160, 160) and labels.max() > 5
    assert "objects" in proc.stdout and "device cpu" in proc.stdout and " s," in proc.stdout


def test_default_output_name_and_no_overwrite(nuclei_tif, capsys):
    default = nuclei_tif.with_name("cells_labels.tif")
    default.unlink(missing_ok=True)
    rc, _, _ = run(["segment", str(nuclei_tif), "--diameter", "24", "-q"], capsys)
    assert rc == 0 and default.exists()
    before = default.read_bytes()
    rc, _, err = run(["segment", str(nuclei_tif), "--diameter", "24", "-q"], capsys)
    assert rc != 0 and "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert default.read_bytes() == before
    rc, _, _ = run(["segment", str(nuclei_tif), "--diameter", "24", "-q", "--overwrite"], capsys)
    assert rc == 0
    default.unlink()


def _bad_inputs(tmp_path):
    good = np.zeros((64, 64), np.uint16)
    cases = {}
    p = tmp_path / "garbage.tif"
    p.write_bytes(b"not a tiff at all" * 10)
    cases["unreadable"] = (p, "cannot read")
    p = tmp_path / "truncated.tif"
    tifffile.imwrite(p, np.random.default_rng(0).integers(0, 999, (256, 256), dtype=np.uint16))
    p.write_bytes(p.read_bytes()[:4000])
    cases["truncated"] = (p, "")
    p = tmp_path / "empty.npy"
    np.save(p, np.zeros((0, 64), np.uint16))
    cases["empty"] = (p, "empty")
    p = tmp_path / "line.npy"
    np.save(p, np.arange(100, dtype=np.uint16))
    cases["1-D"] = (p, "not an image")
    p = tmp_path / "nan.npy"
    np.save(p, np.full((64, 64), np.nan, np.float32))
    cases["all-NaN"] = (p, "no finite values")
    cases["missing"] = (tmp_path / "missing.tif", "does not exist")
    p = tmp_path / "text.txt"
    p.write_text("hello")
    cases["unsupported"] = (p, "unsupported format")
    return good, cases


def test_bad_inputs_give_one_line_and_no_output(tmp_path, capsys):
    _, cases = _bad_inputs(tmp_path)
    for name, (path, needle) in cases.items():
        out = tmp_path / f"{name}_out.tif"
        rc, _, err = run(["segment", str(path), "-o", str(out), "--diameter", "24"], capsys)
        assert rc != 0, name
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("napari-unet: error:")]
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert needle in lines[0], (name, lines[0])
        assert not out.exists(), name
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))


def test_bad_model_files(nuclei_tif, tmp_path, capsys):
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x07" * 100)
    for model, needle in [
        (foreign, "not a napari-unet model"),
        (corrupt, "unreadable"),
        (tmp_path / "no.safetensors", "does not exist"),
        ("nosuchversion", "no model file or saved version"),
    ]:
        out = tmp_path / "o.tif"
        rc, _, err = run(["segment", str(nuclei_tif), "--model", str(model), "-o", str(out)], capsys)
        assert rc != 0 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_all_zero_image_gives_empty_labels(tmp_path, capsys):
    p = tmp_path / "zeros.tif"
    tifffile.imwrite(p, np.zeros((80, 90), np.uint8))
    rc, out, _ = run(["segment", str(p), "-o", str(tmp_path / "z.tif"), "-q"], capsys)
    assert rc == 0 and "0 objects" in out
    assert tifffile.imread(tmp_path / "z.tif").max() == 0


def test_link_iou_reaches_a_zarr_output(tmp_path, capsys):
    # before, the block path quietly dropped --link-iou and wrote unlinked per-plane ids
    import zarr

    plane = synth_nuclei((96, 96), rng=0, style=SynthStyle(diameter=(24, 24)))[0].astype(np.uint16)
    np.save(tmp_path / "stack.npy", np.stack([plane] * 3))
    out = tmp_path / "out.zarr"
    args = ["segment", str(tmp_path / "stack.npy"), "-o", str(out), "--diameter", "24", "--axes", "ZYX", "-q"]
    rc, _, err = run(args + ["--link-iou", "0.3"], capsys)
    assert rc == 0, err
    a = zarr.open_group(str(out), mode="r")["labels/nuclei/0"][:]
    ids = [set(np.unique(p)[1:]) for p in a]
    assert len(ids[0]) > 3 and ids[0] == ids[1] == ids[2]


def test_stack_npy_and_zarr_inputs(tmp_path, capsys):
    import zarr

    planes = np.stack(
        [synth_nuclei((96, 96), rng=i, style=SynthStyle(diameter=(24, 24)))[0].astype(np.uint16) for i in range(3)]
    )
    np.save(tmp_path / "stack.npy", planes)
    z = zarr.open(str(tmp_path / "stack2.zarr"), mode="w", shape=planes.shape, dtype=planes.dtype, chunks=(1, 96, 96))
    z[:] = planes
    rc, out, err = run(
        [
            "segment",
            str(tmp_path / "stack.npy"),
            str(tmp_path / "stack2.zarr"),
            "-o",
            str(tmp_path / "out"),
            "--diameter",
            "24",
            "--axes",
            "ZYX",
            "-q",
        ],
        capsys,
    )
    assert rc == 0, err
    a = tifffile.imread(tmp_path / "out" / "stack_labels.tif")
    assert a.shape == (3, 96, 96) and a.max() > 3
    # ids are unique per plane
    assert not set(np.unique(a[0])[1:]) & set(np.unique(a[1])[1:])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "stack2_labels.tif"), a)
    rc, _, err = run(
        [
            "segment",
            str(tmp_path / "stack.npy"),
            str(tmp_path / "out" / ".." / "stack.npy"),
            "-o",
            str(tmp_path / "o2"),
        ],
        capsys,
    )
    assert rc != 0 and "would be written twice by two inputs" in err


def test_channel_axis_and_wrong_channel(tmp_path, capsys):
    img, _ = synth_nuclei((96, 96), rng=5, style=SynthStyle(diameter=(24, 24)))
    cyx = np.stack([np.zeros_like(img), img])
    p = tmp_path / "two.tif"
    tifffile.imwrite(p, cyx, photometric="minisblack", metadata={"axes": "CYX"})
    rc, out, err = run(
        ["segment", str(p), "--channel", "1", "--diameter", "24", "-o", str(tmp_path / "c.tif"), "-q"], capsys
    )
    assert rc == 0, err
    assert tifffile.imread(tmp_path / "c.tif").shape == (96, 96)
    rc, _, err = run(["segment", str(p), "--channel", "5", "-o", str(tmp_path / "d.tif")], capsys)
    assert rc != 0 and "channel 5 does not exist" in err and not (tmp_path / "d.tif").exists()
    rc, out, err = run(["segment", str(p), "--diameter", "24", "-o", str(tmp_path / "e.tif"), "-q"], capsys)
    assert rc == 0 and ", channel 1 ->" in out  # by default the channel with the nuclei, not the empty one
    rc, out, err = run(
        ["segment", str(p), "--channel", "mean", "--diameter", "24", "-o", str(tmp_path / "f.tif"), "-q"], capsys
    )
    assert rc == 0 and "channels averaged" in out
    with pytest.raises(SystemExit) as exc:  # argparse: usage and one error line, exit status 2
        main(["segment", str(p), "--channel", "blue", "-o", str(tmp_path / "g.tif")])
    assert exc.value.code == 2 and "'blue'" in capsys.readouterr().err and not (tmp_path / "g.tif").exists()


def test_png_and_jpeg_inputs(nuclei_tif, tmp_path, capsys):
    """8-bit PNG, an RGBA PNG (alpha not taken as a channel) and JPEG segment as the same image in a TIFF."""
    import imageio.v3 as iio

    img = tifffile.imread(nuclei_tif).astype(np.float32)
    gray = (255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)
    paths = {"gray.png": gray, "rgba.png": np.dstack([gray, gray, gray, np.full_like(gray, 255)]), "gray.jpg": gray}
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    rc, _, err = run(["segment", str(tmp_path / "gray.tif"), "--diameter", "24", "-q"], capsys)
    assert rc == 0, err
    ref = tifffile.imread(tmp_path / "gray_labels.tif")
    assert ref.max() > 5
    for name, data in paths.items():
        path = tmp_path / name
        iio.imwrite(path, data, **({"quality": 95} if name.endswith(".jpg") else {}))
        out = tmp_path / f"{name}.tif"
        rc, _, err = run(["segment", str(path), "--diameter", "24", "-o", str(out), "-q"], capsys)
        assert rc == 0, (name, err)
        labels = tifffile.imread(out)
        assert labels.shape == gray.shape, name
        if name.endswith(".png"):  # lossless: the very same labels
            np.testing.assert_array_equal(labels, ref, err_msg=name)
        else:
            assert abs(int(labels.max()) - int(ref.max())) <= 2, name


def test_no_merge_cuts_keeps_touching_nuclei_apart(tmp_path, capsys):
    # Crowded, overlapping synthetic nuclei: the rejoin merges some pairs; --no-merge-cuts keeps every one.
    from napari_unet.api import segment

    style = SynthStyle(diameter=(22, 26), density=(0.5, 0.5), touching=(0.8, 0.8), snr=(40, 40), dtype="uint16")
    img, _ = synth_nuclei((256, 256), rng=5, style=style)
    path = tmp_path / "crowded.tif"
    tifffile.imwrite(path, img)
    counts = {}
    for flag in ([], ["--no-merge-cuts"]):
        out = tmp_path / f"labels{len(flag)}.tif"
        rc, _, err = run(["segment", str(path), "-o", str(out), "--diameter", "24", *flag], capsys)
        assert rc == 0, err
        counts[bool(flag)] = len(np.unique(tifffile.imread(out))) - 1
    assert counts[True] > counts[False]
    assert counts[True] == segment(img, "bundled", diameter=24, merge_cuts=False).max()


def test_min_score(tmp_path, capsys):
    # --min-score 0 keeps every object; a bad value is one line; the help's default is the code's.
    from napari_unet.api import segment
    from napari_unet.cli import build_parser
    from napari_unet.core.appearance import add_cytoplasm
    from napari_unet.core.scores import MIN_SCORE

    img, lab = synth_nuclei((160, 160), rng=3)
    img = add_cytoplasm(img, lab, np.random.default_rng(0), level=0.1, texture=1.0, orphans=0.3)
    path = tmp_path / "grain.tif"
    tifffile.imwrite(path, img)
    counts = {}
    for flag in ([], ["--min-score", "0"]):
        out = tmp_path / f"labels{len(flag)}.tif"
        rc, _, err = run(["segment", str(path), "-o", str(out), "--diameter", "24", *flag], capsys)
        assert rc == 0, err
        counts[bool(flag)] = len(np.unique(tifffile.imread(out))) - 1
    assert counts[True] > counts[False] == segment(img, "bundled", diameter=24).max()
    rc, _, err = run(["segment", str(path), "-o", str(tmp_path / "x.tif"), "--min-score", "2"], capsys)
    assert rc == 1 and "min_score must be from 0 to below 1" in err and not (tmp_path / "x.tif").exists()
    sub = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith("segment"))
    assert f"{MIN_SCORE} for the bundled model" in " ".join(sub.format_help().split())


def test_3d_objects_from_a_stack_with_its_voxel_size(tmp_path, capsys):
    # --3d reads the anisotropy from the OME voxel size (Z step 0.6 / pixel 0.3 = 2); objects span planes.
    from napari_unet.core.metrics import match_instances
    from napari_unet.core.synth3d import synth_nuclei_3d

    img, lab = synth_nuclei_3d((12, 96, 96), anisotropy=2, rng=1)
    path = tmp_path / "stack.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 0.6}
    tifffile.imwrite(path, img, metadata=meta)
    out = tmp_path / "objects.tif"
    rc, printed, err = run(["segment", str(path), "-o", str(out), "--3d", "--diameter", "22", "--scores", "-q"], capsys)
    assert rc == 0, err
    assert "3D objects (anisotropy 2)" in printed
    labels = tifffile.imread(out)
    assert labels.shape == img.shape
    depth = [np.ptp(np.nonzero(labels == i)[0]) + 1 for i in np.unique(labels)[1:]]
    assert np.median(depth) >= 4  # 3D objects, not one per plane
    assert match_instances(lab, labels).ap >= 0.85  # measured 1.0 (25 nuclei; planes linked: 0.67)
    rows = (tmp_path / "objects_scores.csv").read_text().splitlines()
    assert rows[0] == "label,score" and len(rows) - 1 == labels.max()
    # the file gives its voxel size, so its Z is spatial: 3D objects without --3d; --2d or --link-iou: planes
    rc, printed, err = run(["segment", str(path), "-o", str(tmp_path / "auto.tif"), "--diameter", "22", "-q"], capsys)
    assert rc == 0 and "3D objects (anisotropy 2)" in printed, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "auto.tif"), labels)
    for flag in (["--2d"], ["--link-iou", "0.3"]):
        rc, printed, err = run(["segment", str(path), "-o", str(tmp_path / "p.tif"), "--diameter", "22", "-q",
                                "--overwrite", *flag], capsys)  # fmt: skip
        assert rc == 0 and "3D objects" not in printed, err
    for bad, msg in ((["--2d", "--anisotropy", "2"], "--2d segments plane by plane"),
                     (["--2d", "--3d"], "--2d segments plane by plane"),
                     (["--3d", "--link-iou", "0.3"], "link_iou is for planes linked into objects"),
                     (["--3d", "--anisotropy", "0.5"], "anisotropy")):  # fmt: skip
        rc, _, err = run(["segment", str(path), "-o", str(tmp_path / "bad.tif"), "-q", *bad], capsys)
        assert rc == 1 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad.tif").exists()


def test_the_summary_says_when_the_image_was_normalised_again(tmp_path, capsys):
    # A blob at 30x the nuclei over 5 % of the field: `segment` runs a second pass, and the summary line says so.
    from napari_unet.core.appearance import bright_debris

    img, lab = synth_nuclei((256, 256), rng=0, style=SynthStyle(diameter=(22, 26), dtype="uint16"))
    dirty = bright_debris(img, lab, np.random.default_rng(0), area=0.05, level=30.0)
    for name, image in (("clean", img), ("dirty", dirty)):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.asarray(image, np.float32))
        rc, out, err = run(["segment", str(tmp_path / f"{name}.tif"), "--diameter", "24"], capsys)
        assert rc == 0, err
        assert ("normalised again" in out) == (name == "dirty"), out


def test_no_output_lands_on_an_input_or_on_another_output(nuclei_tif, tmp_path, capsys):
    """Refused before any work, even with --overwrite: a labels, scores or doubt file over an input, an
    output inside an input store, a second input, two outputs on one file, an unknown kind of file."""
    import zarr

    work = tmp_path / "w"
    work.mkdir()
    img, other = work / "a.tif", work / "a_labels.tif"
    img.write_bytes(nuclei_tif.read_bytes())
    other.write_bytes(nuclei_tif.read_bytes())
    store = work / "scan.tif.zarr"
    zarr.create_array(str(store), shape=(160, 160), chunks=(80, 80), dtype="uint16")[:] = tifffile.imread(img)
    before = {p: p.read_bytes() for p in (img, other)}
    cases = [
        ([str(img), str(other)], "would write over the input"),  # a's labels would replace the second input
        ([str(img), "-o", str(work / "w.tif"), "--uncertainty", str(img)], "would write over the input"),
        ([str(img), "-o", str(work / "z.tif"), "--scores", str(work / "z.tif")], "as .csv"),
        ([str(img), "-o", str(work / "z.tif"), "--uncertainty", str(work / "z.tif")], "written twice"),
        ([str(store), "-o", str(work / "scan.tif")], "would write over the input"),  # its TIFF is built there
        ([str(store), "-o", str(store / "labels.zarr")], "would write over the input"),
        ([str(img), "-o", str(work / "x.png")], ".tif, .tiff or .zarr"),
        ([str(img), "-o", str(work / "x")], ".tif, .tiff or .zarr"),
        ([str(img), "-o", str(work / "a_labels.tif" / "x.tif")], "is not a folder"),
    ]
    for args, message in cases:
        rc, _, err = run(["segment", *args, "--overwrite", "-q", "--diameter", "24"], capsys)
        assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert {p: p.read_bytes() for p in (img, other)} == before
    assert tifffile.imread(img).shape == (160, 160) and zarr.open_array(str(store), mode="r").shape == (160, 160)
    assert sorted(p.name for p in work.iterdir()) == ["a.tif", "a_labels.tif", "scan.tif.zarr"]


def test_an_earlier_zarr_output_is_not_taken_for_a_folder(nuclei_tif, tmp_path, capsys):
    out = tmp_path / "q.zarr"
    assert run(["segment", str(nuclei_tif), "-o", str(out), "-q", "--diameter", "24"], capsys)[0] == 0
    rc, _, err = run(["segment", str(nuclei_tif), "-o", str(out), "-q", "--diameter", "24"], capsys)
    assert rc == 1 and "exists" in err and not list(out.glob("*.tif"))


def test_a_folder_named_like_the_tiff_scratch_is_not_removed(tmp_path, capsys):
    """A TIFF output of a lazy image is built in OUT.tif.zarr first; a folder of that name that is not such
    a run's is the user's, and stays."""
    import zarr

    src = tmp_path / "big.zarr"
    zarr.create_array(str(src), shape=(64, 64), chunks=(32, 32), dtype="uint16")[:] = 0
    mine = tmp_path / "out.tif.zarr"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    rc, _, err = run(["segment", str(src), "-o", str(tmp_path / "out.tif"), "-q", "--diameter", "24"], capsys)
    assert rc == 1 and "move it away" in err and (mine / "notes.txt").read_text() == "mine"


def test_a_stack_thinner_than_a_nucleus_is_segmented_plane_by_plane(tmp_path, capsys):
    """3 planes 0.3 um apart at 0.3 um pixels are 3 px deep, a seventh of a 22 px nucleus: 3D objects thin out
    or vanish there (3 planes of the cells3d sample: 0 objects, 16 in the planes). The default 3D falls back to
    planes and says so; an explicit --3d, and the API's mode='3d', get one line instead."""
    import napari_unet
    from napari_unet.core.errors import ThinStackError

    plane, _ = synth_nuclei((128, 128), rng=5, style=SynthStyle(diameter=(22, 22), dtype="uint16"))
    stack = np.stack([plane] * 3)
    path = tmp_path / "thin.ome.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3,
                                            "PhysicalSizeZ": 0.3})  # fmt: skip
    rc, printed, err = run(["segment", str(path), "-o", str(tmp_path / "l.tif"), "--diameter", "22", "-q"], capsys)
    assert rc == 0 and "too few planes for 3D objects" in printed, err
    labels = tifffile.imread(tmp_path / "l.tif")
    assert labels.shape == stack.shape and all(len(np.unique(p)) > 5 for p in labels)
    rc, printed, err = run(["segment", str(path), "-o", str(tmp_path / "l.zarr"), "--diameter", "22", "-q"], capsys)
    assert rc == 0 and "too few planes for 3D objects" in printed, err  # the same, block by block
    rc, _, err = run(["segment", str(path), "-o", str(tmp_path / "x.tif"), "--3d", "--diameter", "22"], capsys)
    assert rc == 1 and "under a quarter of a nucleus" in err and "--2d" in err and not (tmp_path / "x.tif").exists()
    with pytest.raises(ThinStackError, match="under a quarter of a nucleus"):
        napari_unet.segment(stack, mode="3d", anisotropy=1.0, diameter=22)


def test_unknown_axes_a_labels_input_and_a_single_plane_stack(nuclei_tif, tmp_path, capsys):
    import napari_unet

    plane = tifffile.imread(nuclei_tif)
    five = tmp_path / "five.tif"
    tifffile.imwrite(five, np.stack([np.stack([np.stack([plane] * 2)] * 3)] * 2))  # TZCYX without metadata
    rc, _, err = run(["segment", str(five), "-q"], capsys)
    assert rc == 1 and "cannot guess the axes" in err and "--axes" in err
    labels_zarr = tmp_path / "l.zarr"
    assert run(["segment", str(nuclei_tif), "-o", str(labels_zarr), "-q", "--diameter", "24"], capsys)[0] == 0
    rc, _, err = run(["segment", str(labels_zarr), "-o", str(tmp_path / "again.tif"), "-q"], capsys)
    assert rc == 1 and "holds labels" in err and not (tmp_path / "again.tif").exists()
    one = napari_unet.segment(plane[None], diameter=24)  # a stack of one plane keeps its shape
    assert one.shape == (1, *plane.shape) and one.max() > 3
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, plane[None], photometric="minisblack")
    assert run(["segment", str(single), "-q", "--diameter", "24"], capsys)[0] == 0


def test_a_folder_input_segments_each_image_and_skips_earlier_labels(nuclei_tif, tmp_path, capsys):
    """A screen's folder: each image on its own; a rerun does not take the labels written beside them for images."""
    folder = tmp_path / "plate"
    folder.mkdir()
    img = tifffile.imread(nuclei_tif)
    for name in ("w2.tif", "w10.tif"):
        tifffile.imwrite(folder / name, img)
    (folder / "notes.txt").write_text("not an image")
    rc, out, err = run(["segment", str(folder), "--diameter", "24", "--uncertainty"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [
        "notes.txt", "w10.tif", "w10_doubt.tif", "w10_labels.tif", "w2.tif", "w2_doubt.tif", "w2_labels.tif"]  # fmt: skip
    ref = tifffile.imread(folder / "w2_labels.tif")
    assert ref.max() > 5 and np.array_equal(ref, tifffile.imread(folder / "w10_labels.tif"))
    import zarr

    zarr.create_array(str(folder / "w3.zarr"), shape=img.shape, dtype=img.dtype, chunks=(80, 80))[:] = img
    results = tmp_path / "results"
    rc, _, err = run(["segment", str(folder), "--diameter", "24", "-o", str(results), "-q"], capsys)
    assert rc == 0, err  # the labels and doubt maps in the folder are not inputs now; a zarr store is
    assert "skipping 4 files an earlier run wrote" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in results.iterdir()) == ["w10_labels.tif", "w2_labels.tif", "w3_labels.tif"]
    assert np.array_equal(tifffile.imread(results / "w3_labels.tif"), ref)
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(["segment", str(empty)], capsys)
    assert rc != 0 and "holds no images" in err and len(err.strip().splitlines()) == 1


def test_a_screen_two_inputs_at_a_time_gives_what_one_at_a_time_does(tmp_path, capsys, monkeypatch, two_threads):
    """On a CPU a folder's images go two at a time: the same labels, the lines in the inputs' order, and a damaged
    file among them is its own one line (what tifffile logs while one thread opens it is not printed by the other)."""
    from napari_unet import cli

    folder = tmp_path / "plate"
    folder.mkdir()
    for k in range(4):
        img, _ = synth_nuclei((160, 160), rng=10 + k, style=SynthStyle(diameter=(18, 30), dtype="uint16"))
        tifffile.imwrite(folder / f"w{k}.tif", img)
    for name in ("w1b.tif", "w3b.tif"):
        (folder / name).write_bytes(b"II*\x00garbage")
    rc, _, err = run(["segment", str(folder), "-o", str(tmp_path / "two")], capsys)
    assert rc == 1 and err.startswith("napari-unet: 2 inputs at a time, 1 thread each\n"), err
    rc, out, err = run(["segment", str(folder), "-o", str(tmp_path / "two"), "-q", "--overwrite"], capsys)
    monkeypatch.setattr(cli, "_lanes", lambda *a: 1)
    rc1, out1, err1 = run(["segment", str(folder), "-o", str(tmp_path / "one"), "-q"], capsys)
    assert rc == rc1 == 1
    names = [line.split(":")[0] for line in out.strip().splitlines()]
    assert names == ["w0.tif", "w1.tif", "w2.tif", "w3.tif"] == [line.split(":")[0] for line in out1.splitlines()]
    bad = [f"napari-unet: error: '{folder / n}' holds no image: a damaged or empty TIFF (invalid offset to first "
           "page 1651663207)" for n in ("w1b.tif", "w3b.tif")]  # fmt: skip
    assert err.strip().splitlines() == bad == err1.strip().splitlines()
    for k in range(4):
        two, one = (tifffile.imread(tmp_path / d / f"w{k}_labels.tif") for d in ("two", "one"))
        assert one.max() > 3 and np.array_equal(one, two)


def test_an_output_folder_is_made_for_a_folder_input_or_a_trailing_slash(nuclei_tif, tmp_path, capsys):
    """Folder in, folder out, even for a folder of one image; `-o new/` is a folder to make, `-o x.zarr/` a store."""
    folder = tmp_path / "one"
    folder.mkdir()
    tifffile.imwrite(folder / "w1.tif", tifffile.imread(nuclei_tif))
    rc, _, err = run(["segment", str(folder), "-o", str(tmp_path / "res"), "--scores", str(tmp_path / "res"),
                      "--diameter", "24", "-q"], capsys)  # fmt: skip
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["w1_labels.tif", "w1_scores.csv"]
    rc, _, err = run(["segment", str(nuclei_tif), "-o", str(tmp_path / "new") + "/", "--diameter", "24", "-q"], capsys)
    assert rc == 0 and (tmp_path / "new" / "cells_labels.tif").is_file(), err
    rc, _, err = run(
        ["segment", str(nuclei_tif), "-o", str(tmp_path / "s.zarr") + "/", "--diameter", "24", "-q"], capsys
    )
    assert rc == 0 and (tmp_path / "s.zarr").is_dir() and not (tmp_path / "s.zarr" / "cells_labels.tif").exists(), err


def test_ctrl_c_on_a_folder_says_how_many_were_written_and_leaves_only_whole_files(tmp_path):
    """Two inputs run at once: one may finish writing after Ctrl-C; the count says so, and no partial file stays."""
    import os
    import re
    import signal

    folder, res = tmp_path / "plate", tmp_path / "res"
    folder.mkdir()
    img, _ = synth_nuclei((192, 192), rng=5, style=SynthStyle(diameter=(18, 30), dtype="uint16"))
    for k in range(12):
        tifffile.imwrite(folder / f"w{k:02d}.tif", np.roll(img, 7 * k, axis=1))
    cmd = [sys.executable, "-m", "napari_unet.cli", "segment", str(folder), "-o", f"{res}/", "-q"]
    run_ = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while run_.poll() is None:
        if res.exists() and any(res.iterdir()):
            os.killpg(run_.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
            break
        time.sleep(0.02)
    _, err = run_.communicate(timeout=120)
    assert run_.returncode == 130, err
    said = re.fullmatch(r"napari-unet: interrupted; the labels of (\d+) of 12 inputs were written, the last to '(.+)'",
                        err.strip())  # fmt: skip
    assert said, err
    files = sorted(res.iterdir())
    assert len(files) == int(said[1]) < 12 and str(files[-1]) == said[2]
    assert all(p.name.endswith("_labels.tif") and tifffile.imread(p).max() > 0 for p in files)
