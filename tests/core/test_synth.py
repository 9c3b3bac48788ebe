"""Tests for the synthetic nuclei generator (napari_unet.core.synth)."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label, regionprops
from skimage.segmentation import clear_border

from napari_unet.core.synth import MIN_AREA, SynthStyle, synth_dataset, synth_nuclei

SHAPE = (128, 128)
SEEDS = range(12)


@pytest.fixture(scope="module")
def samples():
    """A few images from the default style, generated once for the module."""
    return [synth_nuclei(SHAPE, rng=s) for s in SEEDS]


def test_deterministic_given_seed():
    im1, lb1 = synth_nuclei(SHAPE, rng=7)
    im2, lb2 = synth_nuclei(SHAPE, rng=7)
    np.testing.assert_array_equal(im1, im2)
    np.testing.assert_array_equal(lb1, lb2)
    im3, _ = synth_nuclei(SHAPE, rng=8)
    assert im3.shape != im1.shape or not np.array_equal(im1, im3)


def test_dataset_deterministic_and_prefix_stable():
    a = synth_dataset(3, (64, 64), seed=5)
    b = synth_dataset(4, (64, 64), seed=5)
    assert len(a) == 3 and len(b) == 4
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)


def test_generator_rng_is_advanced():
    g = np.random.default_rng(0)
    im1, _ = synth_nuclei((64, 64), rng=g)
    im2, _ = synth_nuclei((64, 64), rng=g)
    assert not np.array_equal(im1, im2)


def test_labels_consecutive_int32_same_shape(samples):
    for im, lb in samples:
        assert lb.dtype == np.int32
        assert im.shape == lb.shape == SHAPE
        n = int(lb.max())
        assert n > 0
        np.testing.assert_array_equal(np.unique(lb), np.arange(n + 1))


def test_non_square_shape():
    im, lb = synth_nuclei((96, 160), rng=1)
    assert im.shape == lb.shape == (96, 160)


def test_dtype_variety(samples):
    dtypes = {im.dtype for im, _ in samples}
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}


def test_fixed_dtype():
    for s in range(3):
        im, _ = synth_nuclei((64, 64), rng=s, style=SynthStyle(dtype=("uint16",)))
        assert im.dtype == np.uint16


def test_min_area_and_single_component(samples):
    for _, lb in samples:
        for r in regionprops(lb):
            assert r.area >= MIN_AREA
            assert label(r.image).max() == 1  # default = full connectivity
            assert label(r.image, connectivity=1).max() == 1  # even 4-connected


def test_nuclei_brighter_than_background(samples):
    for im, lb in samples:
        f = im.astype(np.float64)
        assert f[lb > 0].mean() > f[lb == 0].mean()


def test_every_nucleus_visible(samples):
    """Every nucleus's mean exceeds its local background by > 2 background-noise stds.

    The local background of a nucleus is the median of the pixels within 15 px of it that are
    at least 6 px away from every nucleus (so blur spill-over of neighbours does not count).
    """
    checked = 0
    for im, lb in samples:
        f = im.astype(np.float64)
        n = int(lb.max())
        far = ~ndi.binary_dilation(lb > 0, iterations=5)
        hp = (f - ndi.uniform_filter(f, 5))[far]
        sigma = 1.4826 * np.median(np.abs(hp - np.median(hp))) * np.sqrt(25 / 24)
        dist, (iy, ix) = ndi.distance_transform_edt(lb == 0, return_indices=True)
        owner = np.where(far & (dist < 15), lb[iy, ix], 0)
        enough = np.bincount(owner.ravel(), minlength=n + 1)[1:] >= 20
        background = np.asarray(ndi.median(f, owner, index=np.arange(1, n + 1)))
        means = np.asarray(ndi.mean(f, lb, index=np.arange(1, n + 1)))
        assert np.all((means - background)[enough] > 2.0 * sigma)
        checked += int(enough.sum())
    assert checked > 50


def test_crowded_style_has_touching_nuclei():
    style = SynthStyle(density=(0.5, 0.5), touching=(0.6, 0.6))
    for s in range(3):
        _, lb = synth_nuclei(SHAPE, rng=s, style=style)
        h = (lb[:, :-1] != lb[:, 1:]) & (lb[:, :-1] > 0) & (lb[:, 1:] > 0)
        v = (lb[:-1, :] != lb[1:, :]) & (lb[:-1, :] > 0) & (lb[1:, :] > 0)
        assert h.any() or v.any()


def test_sparse_style_without_touching_has_no_contacts():
    style = SynthStyle(density=(0.1, 0.1), touching=(0.0, 0.0))
    _, lb = synth_nuclei(SHAPE, rng=0, style=style)
    h = (lb[:, :-1] != lb[:, 1:]) & (lb[:, :-1] > 0) & (lb[:, 1:] > 0)
    v = (lb[:-1, :] != lb[1:, :]) & (lb[:-1, :] > 0) & (lb[1:, :] > 0)
    assert lb.max() > 0 and not (h.any() or v.any())


def test_touching_nuclei_parted_by_a_dark_seam():
    """With `seam`, the shared border of touching nuclei is darker than the dimmer one's interior (as in
    real images); without it the same seed gives the same image as before the option existed."""
    crowded = SynthStyle(density=(0.55, 0.55), touching=(0.8, 0.8), texture=(0.0, 0.0), spots=(0.0, 0.0))

    def seam_ratio(style):
        ratios = []
        for s in range(3):
            im, lb = synth_nuclei((192, 192), rng=s, style=style)
            im = im.astype(np.float32)
            inner = lb * ndi.binary_erosion(lb > 0, iterations=3)
            level = np.asarray(ndi.mean(im, inner, index=np.arange(lb.max() + 1)))
            a, b = lb[:, :-1], lb[:, 1:]
            m = (a != b) & (a > 0) & (b > 0)
            seam = 0.5 * (im[:, :-1][m] + im[:, 1:][m])
            ratios += list(seam / np.minimum(level[a[m]], level[b[m]]))
        return float(np.nanmedian(ratios))

    assert seam_ratio(replace(crowded, seam=(0.1, 0.5))) < seam_ratio(crowded) - 0.1
    same = [
        synth_nuclei(SHAPE, rng=4, style=crowded),
        synth_nuclei(SHAPE, rng=4, style=replace(crowded, seam=(1.0, 1.0))),
    ]
    assert np.array_equal(same[0][0], same[1][0])
    with pytest.raises(ValueError, match="seam"):
        SynthStyle(seam=(0.5, 1.5))


def test_fixed_diameter():
    # nuclei cut by the image border are smaller by design, so measure whole ones only
    style = SynthStyle(diameter=(30.0, 30.0))
    eq = []
    for s in range(4):
        _, lb = synth_nuclei((256, 256), rng=s, style=style)
        eq += [r.equivalent_diameter_area for r in regionprops(clear_border(lb))]
    assert len(eq) > 20
    assert abs(np.median(eq) - 30.0) <= 0.2 * 30.0


def test_saturation():
    style = SynthStyle(saturation_prob=1.0, mitotic=(0.0, 0.0), snr=(20.0, 20.0))
    for s in range(3):
        im, lb = synth_nuclei((96, 96), rng=s, style=style)
        top = np.iinfo(im.dtype).max
        assert (im == top).any()
        assert np.median(im[lb == 0]) < 0.5 * top


def test_empty_image():
    im, lb = synth_nuclei((64, 64), rng=0, style=SynthStyle(density=(0.0, 0.0)))
    assert lb.max() == 0 and lb.dtype == np.int32 and im.shape == (64, 64)


@pytest.mark.parametrize(
    "kwargs",
    [dict(diameter=(20.0, 10.0)), dict(dtype=("float32",)), dict(dtype=()), dict(snr=(0.0, 5.0))],
)
def test_invalid_style(kwargs):
    with pytest.raises(ValueError):
        SynthStyle(**kwargs)
