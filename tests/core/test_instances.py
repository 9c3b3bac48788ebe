import numpy as np
import pytest

from napari_unet.core.instances import (
    BOUNDARY,
    INTERIOR,
    OBJECT_SHARE,
    SEED_SHARE,
    border_weights,
    class_targets,
    labels_from_probabilities,
    link_planes,
    merge_cut_objects,
    split_joined_seeds,
)


def _probs_from_targets(target):
    p = np.zeros((3, *target.shape), np.uint8)
    for c in range(3):
        p[c][target == c] = 255
    return p


def test_touching_objects_come_out_separate(touching_discs):
    target = class_targets(touching_discs)
    # The two touching discs are separated by boundary pixels of both.
    assert (target[48, 51:55] == BOUNDARY).all()
    pred = labels_from_probabilities(_probs_from_targets(target), min_size=10)
    assert pred.max() == 3
    for i in (1, 2, 3):
        ids, counts = np.unique(pred[touching_discs == i], return_counts=True)
        assert ids[np.argmax(counts)] > 0
        assert counts.max() / (touching_discs == i).sum() > 0.95
    # Each predicted object maps to exactly one true object.
    assert len({(int(a), int(b)) for a, b in zip(touching_discs.ravel(), pred.ravel()) if a and b}) == 3


def test_banded_watershed_equals_whole_plane(touching_discs):
    probs = _probs_from_targets(class_targets(np.tile(touching_discs, (4, 1))))
    whole = labels_from_probabilities(probs, band=10_000)
    banded = labels_from_probabilities(probs, band=50, margin=30)
    np.testing.assert_array_equal(whole, banded)


def test_small_objects_removed_and_ids_consecutive():
    target = np.zeros((64, 64), np.uint8)
    target[5:25, 5:25] = INTERIOR
    target[40:43, 40:43] = INTERIOR
    pred = labels_from_probabilities(_probs_from_targets(target), min_size=30)
    assert set(np.unique(pred)) == {0, 1}


def test_empty_probabilities_give_empty_labels():
    p = np.zeros((3, 32, 32), np.uint8)
    p[0] = 255
    assert labels_from_probabilities(p).max() == 0


def test_border_weights_peak_between_touching_objects(touching_discs):
    w = border_weights(touching_discs, w0=10, sigma=5)
    assert w[touching_discs > 0].max() == 0
    gap = w[48, 51:53].max() if (touching_discs[48, 51:53] == 0).any() else w[36:40, 50:54].max()
    far = w[90, 5]
    assert gap > 5 * max(far, 1e-6) and far < 0.01


def test_link_planes():
    a = np.zeros((3, 20, 20), np.int32)
    a[0, 2:8, 2:8] = 1
    a[1, 3:9, 2:8] = 2
    a[2, 12:18, 12:18] = 3  # no overlap with plane 1: a new object
    linked = link_planes(a, 0.3)
    assert linked[0, 4, 4] == linked[1, 4, 4] != 0
    assert linked[2, 14, 14] not in (0, linked[0, 4, 4])
    assert set(np.unique(linked)) == {0, 1, 2}


def test_a_nucleus_cut_in_two_is_rejoined_and_touching_nuclei_stay_apart():
    yy, xx = np.mgrid[:110, :140]
    lab = np.zeros((110, 140), np.int32)
    for k, cx in enumerate((15, 45, 75, 105)):  # whole nuclei of the typical size (the median object)
        lab[(yy - 95) ** 2 + (xx - cx) ** 2 < 12**2] = 10 + k
    disc = (yy - 40) ** 2 + (xx - 30) ** 2 < 15**2
    lab[disc] = 1
    lab[disc & (xx > 30)] = 2  # one round nucleus cut along a straight line: long border, convex union
    lab[(yy - 40) ** 2 + (xx - 70) ** 2 < 12**2] = 3  # two nuclei meeting in a short waist
    lab[(yy - 40) ** 2 + (xx - 92) ** 2 < 12**2] = 4
    lab[(lab == 0) & ((yy - 40) ** 2 + (xx - 81) ** 2 < 4**2)] = 3
    for y0, ident in ((20, 5), (32, 6), (44, 7)):  # a chain of three slabs: each joins one other at most
        lab[y0 - 6 : y0 + 6, 115:135] = ident
    out = merge_cut_objects(lab.copy())
    assert len(np.unique(out[disc])) == 1
    assert out[40, 65] != out[40, 97]
    assert len(np.unique(out[14:50, 115:135])) == 2


def test_two_nuclei_pressed_together_are_not_rejoined():
    # A long straight border and a convex union, like a nucleus cut in two, but twice a typical nucleus' area.
    yy, xx = np.mgrid[:100, :160]
    lab = np.zeros((100, 160), np.int32)
    for k, cx in enumerate((15, 45, 75, 105)):  # typical nuclei, 314 px
        lab[(yy - 15) ** 2 + (xx - cx) ** 2 < 10**2] = k + 1
    lab[50:68, 20:38] = 5  # two square nuclei of 324 px side by side: union 2.1x the median
    lab[50:68, 38:56] = 6
    disc = (yy - 60) ** 2 + (xx - 110) ** 2 < 10**2
    lab[disc] = 7
    lab[disc & (xx > 110)] = 8  # one nucleus cut in two: union 1x the median
    out = merge_cut_objects(lab.copy())
    assert out[60, 30] != out[60, 45] and len(np.unique(out[disc])) == 1
    joined = merge_cut_objects(lab.copy(), max_union=np.inf)  # without the size guard, both pairs are joined
    assert joined[60, 30] == joined[60, 45]


def test_with_the_diameter_given_a_block_rejoins_as_the_whole_plane_would():
    # A block that holds a nucleus cut in two beside five micronuclei: its median object is a micronucleus, so
    # by the median the halves' union (314 px) is 11x a typical object and stays cut, though the whole plane,
    # whose median object is a nucleus, rejoins it. The diameter's disc does not depend on what the block holds.
    yy, xx = np.mgrid[:60, :90]
    lab = np.zeros((60, 90), np.int32)
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 < 10**2
    lab[disc] = 1
    lab[disc & (xx > 30)] = 2
    for k, cx in enumerate((55, 62, 69, 76, 83)):
        lab[(yy - 30) ** 2 + (xx - cx) ** 2 < 3**2] = 3 + k
    assert len(np.unique(merge_cut_objects(lab.copy())[disc])) == 2
    typical = OBJECT_SHARE * np.pi / 4 * 20**2
    assert len(np.unique(merge_cut_objects(lab.copy(), typical=typical)[disc])) == 1
    # The same for the seeds: a seed of two joined interiors beside large nuclei's seeds only is not even tried
    # by the median (it is under 1.6x the median seed), and is split by the diameter's typical seed.
    yy, xx = np.mgrid[:60, :150]
    interior = np.zeros((60, 150), np.float32)
    for cx in (20, 40):
        interior[(yy - 30) ** 2 + (xx - cx) ** 2 <= 9**2] = 0.9
    interior[(np.abs(yy - 30) <= 2) & (xx >= 28) & (xx <= 32)] = 0.55
    for cx in (75, 105, 135):
        interior[(yy - 30) ** 2 + (xx - cx) ** 2 <= 14**2] = 0.9
    from scipy import ndimage as ndi

    seeds, n = ndi.label(interior > 0.5)
    assert split_joined_seeds(seeds.copy(), n, interior) == n
    assert split_joined_seeds(seeds, n, interior, typical=SEED_SHARE * np.pi / 4 * 20**2) == n + 1
    assert seeds[30, 20] != seeds[30, 40]


def test_seeds_of_two_touching_nuclei_are_split_and_a_large_round_one_is_not():
    yy, xx = np.mgrid[:120, :200]
    probs = np.zeros((3, 120, 200), np.float32)
    probs[0] = 1.0
    interior = probs[1]

    def nucleus(cy, cx, r, level=0.9):
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        interior[d] = np.maximum(interior[d], level)
        probs[0][d] = 0.0

    for cx in (20, 50, 80, 110):  # typical nuclei: the median seed
        nucleus(20, cx, 9)
    nucleus(70, 28, 10)  # two nuclei whose interiors a bridge of 0.55 joins into one seed, in a waist
    nucleus(70, 54, 10)
    bridge = (np.abs(yy - 70) <= 2) & (xx >= 36) & (xx <= 46)
    interior[bridge & (interior < 0.55)] = 0.55
    probs[0][bridge] = 0.0
    nucleus(70, 150, 16)  # one large round nucleus, 2.8x the median seed: solid, so never tried
    probs[2] = np.clip(1.0 - probs[0] - probs[1], 0, 1)
    probs[0] = 1.0 - probs[1] - probs[2]
    joined = labels_from_probabilities(probs, min_size=10, split_seeds=False, merge_cuts=False)
    assert joined[70, 28] == joined[70, 54]
    out = labels_from_probabilities(probs, min_size=10, merge_cuts=False)
    assert out[70, 28] != out[70, 54] and out[70, 28] > 0 and out[70, 54] > 0
    assert len(np.unique(out[(yy - 70) ** 2 + (xx - 150) ** 2 <= 15**2])) == 1
    assert out.max() == 7
    # In place, and only the joined seed gains a part.
    from scipy import ndimage as ndi

    seeds, n = ndi.label(interior > 0.5)
    assert split_joined_seeds(seeds, n, interior) == n + 1


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_refine_outlines_trims_a_halo_keeps_holes_and_only_shrinks():
    from scipy import ndimage as ndi

    from napari_unet.core.instances import refine_outlines

    shape = (120, 160)
    bright, dim = _disc(shape, 40, 40, 12), _disc(shape, 70, 110, 12)
    image = ndi.gaussian_filter(1.0 * bright + 0.1 * dim, 2) + 0.01
    image[_disc(shape, 40, 40, 3)] = 0.01  # a dark nucleolus inside the bright nucleus
    labels = np.zeros(shape, np.int32)
    labels[_disc(shape, 40, 40, 19)] = 1  # the network's outline: the blur halo included
    labels[_disc(shape, 70, 110, 19)] = 2
    labels[_disc(shape, 100, 30, 8)] = 3  # nothing under it: no contrast, left as it is
    out = refine_outlines(labels, image, diameter=24, level=0.15)
    assert out.dtype == np.int32 and set(np.unique(out)) == {0, 1, 2, 3}
    assert ((out > 0) <= (labels > 0)).all() and (out[out > 0] == labels[out > 0]).all()  # only shrinks

    def iou(m, truth):
        return (m & truth).sum() / (m | truth).sum()

    for i, truth in ((1, bright), (2, dim)):
        # the 15 % level of a 2 px blur sits ~2 px outside the edge: IoU 0.39 -> 0.71 (bright) and 0.72 (dim)
        assert iou(out == i, truth) > iou(labels == i, truth) + 0.2 and iou(out == i, truth) > 0.65
    assert out[40, 40] == 1  # the nucleolus is a hole, not an edge
    np.testing.assert_array_equal(out == 3, labels == 3)
    np.testing.assert_array_equal(refine_outlines(labels, image, 24, 0.0), labels)


def test_a_defocused_field_is_trimmed_at_its_steepest_level_and_a_sharp_one_at_the_models():
    from scipy import ndimage as ndi

    from napari_unet.core.instances import refine_outlines

    shape, rng = (160, 200), np.random.default_rng(0)
    centres = [(40, 40), (40, 100), (40, 160), (110, 40), (110, 100), (110, 160)]
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        truth[_disc(shape, cy, cx, 12)] = i
    halo = np.zeros(shape, np.int32)  # the network's outline: 4 px outside the edge
    for i, (cy, cx) in enumerate(centres, 1):
        halo[_disc(shape, cy, cx, 16)] = i
    sharp = ndi.gaussian_filter(1.0 * (truth > 0), 0.7) + 0.01 * rng.standard_normal(shape)
    blurred = ndi.gaussian_filter(1.0 * (truth > 0), 3.6) + 0.01 * rng.standard_normal(shape)  # 0.15 x diameter

    def iou(out):
        return np.mean([((out == i) & (truth == i)).sum() / ((out == i) | (truth == i)).sum() for i in range(1, 7)])

    for image in (sharp, blurred):
        fixed = refine_outlines(halo, image, diameter=24, level=0.15, steepest=False)
        chosen = refine_outlines(halo, image, diameter=24, level=0.15)
        if image is sharp:  # equally steep at every level: the model's own level
            np.testing.assert_array_equal(chosen, fixed)
        else:  # the 15 % contour of a 3.6 px blur sits ~4 px outside the edge; the steepest is near half height
            assert iou(fixed) < 0.8 and iou(chosen) > iou(fixed) + 0.1


@pytest.mark.parametrize("shape", [(40, 50), (12, 30, 40)])
def test_inner_boundaries_are_skimages_inner_boundaries(shape):
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    from napari_unet.core.instances import inner_boundaries

    labels = ndi.median_filter(np.random.default_rng(0).integers(0, 4, shape).astype(np.int32), 3)
    np.testing.assert_array_equal(inner_boundaries(labels), find_boundaries(labels, mode="inner"))
