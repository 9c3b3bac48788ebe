import subprocess
import sys

import numpy as np
import pytest

import napari_unet
from napari_unet.core.metrics import match_instances
from napari_unet.core.normalize import InputError
from napari_unet.core.synth import SynthStyle, synth_nuclei


def test_import_is_light_and_core_loads_no_qt():
    code = (
        "import sys, napari_unet; assert 'torch' not in sys.modules, 'torch at import';"
        "import napari_unet.core.segment, napari_unet.core.io, napari_unet.api;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'magicgui', 'superqt')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_load_bundled_model_is_in_eval_mode():
    m = napari_unet.load_model()
    assert not m.training and m.info.diameter > 0 and m.info.name == "bundled"


def test_segment_returns_labels_with_spatial_shape():
    img, truth = synth_nuclei((128, 160), rng=7, style=SynthStyle(diameter=(24, 24), snr=(40, 60)))
    labels = napari_unet.segment(img, diameter=24)
    assert labels.shape == img.shape and labels.dtype == np.int32
    assert match_instances(truth, labels).ap > 0.3
    stack = np.stack([img, img[::-1]])
    lab3 = napari_unet.segment(stack, diameter=24, axes="ZYX")
    assert lab3.shape == stack.shape
    yxc = np.stack([img, img, img], -1)
    assert napari_unet.segment(yxc, diameter=24).shape == img.shape  # RGB guessed as YXC


def test_an_xarray_image_is_read_by_its_dims():
    xr = pytest.importorskip("xarray")
    img, truth = synth_nuclei((128, 160), rng=7, style=SynthStyle(diameter=(24, 24), snr=(40, 60)))
    # Two channels first: by shape alone this is a 2-plane ZYX stack; its dims say channel, y, x.
    cyx = np.stack([np.zeros_like(img), img])
    named = napari_unet.segment(xr.DataArray(cyx, dims=("C", "Y", "X")), diameter=24, return_result=True)
    assert named.axes == "YX" and named.labels.shape == img.shape and named.extra["channel"] == 1
    assert match_instances(truth, named.labels).ap > 0.3
    tzyx = xr.DataArray(np.stack([cyx, cyx[::-1]]), dims=("time", "z", "y", "x"))
    assert napari_unet.segment(tzyx, diameter=24, return_result=True).axes == "TZYX"  # no --axes needed
    unnamed = napari_unet.segment(xr.DataArray(cyx), diameter=24, return_result=True)  # dim_0, dim_1, dim_2
    assert unnamed.axes == "ZYX" and unnamed.labels.shape == cyx.shape  # guessed from the shape, as for numpy


def test_segment_rejects_bad_input():
    with pytest.raises(InputError, match="at least 2 dimensions"):
        napari_unet.segment(np.zeros(10))
    with pytest.raises(InputError, match="no finite values"):
        napari_unet.segment(np.full((32, 32), np.nan))
    with pytest.raises(InputError, match="axes"):
        napari_unet.segment(np.zeros((2, 3, 32, 32)))
    with pytest.raises(InputError, match="diameter"):
        napari_unet.segment(np.zeros((32, 32)), diameter=-3)
    for bad in (1.0, -0.1, float("nan"), "0.3"):
        with pytest.raises(InputError, match="min_score must be from 0 to below 1"):
            napari_unet.segment(np.zeros((32, 32)), min_score=bad)
    # options of the wrong kind get the same one sentence, not numpy's or Python's own error
    for kw, message in [
        ({"tile": 64, "overlap": 64}, "smaller than the tile"),
        ({"channel": 1.5}, "channel must be"),
        ({"channel": True}, "channel must be"),
        ({"axes": 2}, "axes must be letters"),
        ({"mode": "3d", "anisotropy": "2"}, "anisotropy must be a number"),
    ]:
        with pytest.raises(InputError, match=message):
            napari_unet.segment(np.zeros((4, 32, 32)), **kw)
    assert napari_unet.segment(np.zeros((32, 32)), batch_size=2.0, tile=64.0, diameter=24).shape == (32, 32)


def test_all_zero_image_is_valid():
    assert napari_unet.segment(np.zeros((64, 64), np.uint16)).max() == 0


def test_diameter_is_estimated_near_truth():
    from napari_unet.core.instances import median_diameter

    img, truth = synth_nuclei((384, 384), rng=11, style=SynthStyle(diameter=(40, 40), snr=(40, 60), density=(0.3, 0.3)))
    res = napari_unet.segment(img, return_result=True)
    true_d = median_diameter(truth)
    assert 0.7 < res.diameter / true_d < 1.4, (res.diameter, true_d)


def test_stack_diameter_is_measured_where_objects_are_sharp():
    """A z-stack whose first planes hold only noise: the size is measured on an in-focus plane."""
    from napari_unet.core.instances import median_diameter

    img, truth = synth_nuclei((256, 256), rng=3, style=SynthStyle(diameter=(36, 36), snr=(40, 60), density=(0.3, 0.3)))
    rng = np.random.default_rng(0)
    noise = [rng.normal(float(img.min()), 2.0, img.shape).clip(0).astype(img.dtype) for _ in range(3)]
    stack = np.stack([*noise, img])
    res = napari_unet.segment(stack, axes="ZYX", return_result=True)
    assert 0.7 < res.diameter / median_diameter(truth) < 1.4, (res.diameter, median_diameter(truth))
    assert res.labels[3].max() > 0


def test_wide_integers_with_a_large_offset_keep_their_contrast():
    # float32 keeps 24 bits: an int64 image offset by 2**40 used to normalise to a constant (0 objects).
    img, _ = synth_nuclei((128, 128), rng=2, style=SynthStyle(diameter=(24, 24), dtype="uint16"))
    plain = napari_unet.segment(img, diameter=24)
    assert plain.max() > 3
    np.testing.assert_array_equal(napari_unet.segment(img.astype(np.int64) + 2**40, diameter=24), plain)
